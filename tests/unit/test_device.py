"""Device and precision chosen for `poft train` / `poft dpo` when the user did not say (poft.device)."""

from types import SimpleNamespace

from poft.device import cpu_has_bf16, fit_training_args

AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
AMX = "flags\t\t: fpu avx2 amx_tile amx_bf16\n"
PLAIN = "flags\t\t: fpu sse2 avx2\n"


def args(**overrides):
    return SimpleNamespace(**{"use_cpu": False, "bf16": None, "fp16": False, **overrides})


def test_cpu_bf16_flags_are_read_from_cpuinfo():
    assert cpu_has_bf16(AVX512_BF16) and cpu_has_bf16(AMX)
    assert not cpu_has_bf16(PLAIN) and not cpu_has_bf16("")


def test_no_gpu_and_defaults_train_on_the_cpu_in_bf16_where_it_has_the_instructions():
    a = args()
    said = fit_training_args(a, gpu=False, bf16_cpu=True)
    assert a.use_cpu is True and a.bf16 is True and "use_cpu=True" in said and "bf16 autocast" in said
    b = args()
    assert "float32" in fit_training_args(b, gpu=False, bf16_cpu=False) and b.bf16 is False


def test_what_the_user_set_is_kept():
    a = args(bf16=False)
    fit_training_args(a, gpu=False, bf16_cpu=True)
    assert a.bf16 is False and a.use_cpu is True  # float32 asked for; the CPU is the only device
    b = args(use_cpu=True, bf16=True)
    assert fit_training_args(b, gpu=False, bf16_cpu=False) is None and b.bf16 is True
    c = args(fp16=True)
    fit_training_args(c, gpu=False, bf16_cpu=True)
    assert c.bf16 is None  # TRL resolves bf16 against fp16 itself
    d = args()
    assert fit_training_args(d, gpu=True) is None and d.use_cpu is False and d.bf16 is None


def test_poft_cpu_bf16_overrides_the_detection(monkeypatch):
    monkeypatch.setenv("POFT_CPU_BF16", "1")
    assert cpu_has_bf16() and not cpu_has_bf16(PLAIN)  # an explicit cpuinfo is still read as given
    monkeypatch.setenv("POFT_CPU_BF16", "0")
    assert not cpu_has_bf16()


def test_scoring_dtype_auto_is_bf16_on_cuda_and_bf16_cpus_else_float32():
    import torch

    from poft.aligned import resolve_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, bf16_cpu=True) == torch.bfloat16
    assert resolve_dtype("auto", cpu, bf16_cpu=False) == torch.float32
    assert resolve_dtype("auto", cuda, bf16_cpu=False) == torch.bfloat16
    assert resolve_dtype("float32", cpu, bf16_cpu=True) == torch.float32


def cgroup(tmp_path, v2: str | None = None, v1: tuple[int, int] | None = None):
    """A cgroup root with a v2 `cpu.max` and/or v1 `cpu/cpu.cfs_quota_us` + `cpu.cfs_period_us`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    from poft.device import cgroup_cpu_quota

    assert cgroup_cpu_quota(cgroup(tmp_path / "a", v2="200000 100000")) == 2.0
    assert cgroup_cpu_quota(cgroup(tmp_path / "b", v2="max 100000")) is None
    assert cgroup_cpu_quota(cgroup(tmp_path / "c", v1=(150000, 100000))) == 1.5
    assert cgroup_cpu_quota(cgroup(tmp_path / "d", v1=(-1, 100000))) is None
    assert cgroup_cpu_quota(cgroup(tmp_path / "e")) is None  # no cgroup files: no quota
    assert cgroup_cpu_quota(tmp_path / "missing") is None


def test_threads_are_the_cpus_this_process_may_use(tmp_path):
    from poft.device import cpu_threads

    no_quota = cgroup(tmp_path / "none", v2="max 100000")
    assert cpu_threads(range(64), no_quota, {}).threads == 64
    assert cpu_threads({3, 5}, no_quota, {}).threads == 2  # taskset -c 3,5 on a 64-core machine
    quota = cgroup(tmp_path / "quota", v2="200000 100000")  # docker --cpus 2 on a 64-core machine
    plan = cpu_threads(range(64), quota, {})
    assert (plan.threads, plan.affinity, plan.quota, plan.processes) == (2, 64, 2.0, 1)
    assert plan.sentence() == "2 CPU threads (affinity 64, cgroup quota 2 CPUs, 1 process)"
    assert cpu_threads(range(64), cgroup(tmp_path / "v1", v1=(150000, 100000)), {}).threads == 1  # 1.5 CPUs
    big_quota = cgroup(tmp_path / "big", v2="800000 100000")  # 8 CPUs allowed, 2 to run on
    assert cpu_threads(range(2), big_quota, {}).threads == 2


def test_threads_are_shared_by_the_processes_of_a_torchrun_node(tmp_path):
    from poft.device import cpu_threads

    no_quota = cgroup(tmp_path / "none", v2="max 100000")
    plan = cpu_threads(range(8), no_quota, {"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4"})  # 2 nodes x 2
    assert (plan.threads, plan.processes) == (4, 2)
    assert plan.sentence() == "4 CPU threads (affinity 8, cgroup quota none, 2 processes)"
    assert cpu_threads(range(2), no_quota, {"LOCAL_WORLD_SIZE": "2"}).threads == 1
    assert cpu_threads(range(2), no_quota, {"LOCAL_WORLD_SIZE": "3"}).threads == 1  # at least 1
    quota = cgroup(tmp_path / "quota", v2="400000 100000")
    assert cpu_threads(range(64), quota, {"LOCAL_WORLD_SIZE": "2"}).threads == 2


def test_the_users_omp_num_threads_wins(tmp_path):
    from poft.device import cpu_threads

    plan = cpu_threads(range(64), cgroup(tmp_path, v2="200000 100000"), {"OMP_NUM_THREADS": "5"})
    assert plan.threads == 5 and plan.user == "OMP_NUM_THREADS=5"
    assert "OMP_NUM_THREADS=5, the user's setting" in plan.sentence()
    assert cpu_threads(range(4), tmp_path, {"OMP_NUM_THREADS": ""}).user is None  # empty = unset


def test_torch_set_num_threads_by_the_user_wins(tmp_path):
    """torch's count, when it is not one torch starts with on this machine (its cores), was the user's."""
    from poft.device import cpu_threads

    kept = cpu_threads(range(64), tmp_path, {}, torch_threads=3, machine_defaults={32, 64})
    assert kept.threads == 3 and kept.user == "torch.set_num_threads(3)"
    assert "torch.set_num_threads(3), the user's setting" in kept.sentence()
    assert cpu_threads({0, 1}, tmp_path, {}, torch_threads=32, machine_defaults={32, 64}).threads == 2
    assert cpu_threads({0, 1}, tmp_path, {}, torch_threads=3).threads == 2  # nothing to compare with


def test_fit_cpu_threads_sets_torch_unless_the_user_chose(monkeypatch, capsys):
    import os

    import torch

    from poft.device import CpuThreads, fit_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        fit_cpu_threads(CpuThreads(1, 2, None, 1))
        assert torch.get_num_threads() == 1 and "OMP_NUM_THREADS" not in os.environ
        assert "poft: 1 CPU thread (affinity 2, cgroup quota none, 1 process)" in capsys.readouterr().out
        fit_cpu_threads(CpuThreads(7, 8, None, 1, user="OMP_NUM_THREADS=7"))
        assert torch.get_num_threads() == 1  # the user's OMP_NUM_THREADS already decided torch's threads
        fit_cpu_threads(CpuThreads(1, 2, None, 2))  # torchrun: accelerate must not replace it
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_a_shared_cpu_is_said_when_the_load_is_above_the_cores_poft_uses():
    from poft.device import CpuThreads, shared_cpu

    two = CpuThreads(2, 2, None, 1)  # 2 threads on a 2-CPU machine
    said = shared_cpu(two, 5.2, machine_cpus=2)
    assert said == "the CPU is shared (load 5.2 on the 2 cores poft uses): timings will be slower"
    assert shared_cpu(two, 1.9, machine_cpus=2) is None and shared_cpu(two, None, machine_cpus=2) is None
    torchrun = CpuThreads(1, 2, None, 2)  # 2 processes x 1 thread: 2 cores
    assert "load 2.5 on the 2 cores poft uses" in shared_cpu(torchrun, 2.5, machine_cpus=2)
    pinned = CpuThreads(2, 2, None, 1)  # taskset -c 0,1 on a 64-CPU machine: the load may be elsewhere
    assert shared_cpu(pinned, 10.0, machine_cpus=64) is None
    assert "(load 70.0 on the 2 cores of 64 poft uses)" in shared_cpu(pinned, 70.0, machine_cpus=64)
    user = CpuThreads(8, 2, None, 1, user="OMP_NUM_THREADS=8")  # more threads than CPUs: still 2 cores
    assert "on the 2 cores" in shared_cpu(user, 3.0, machine_cpus=2)
    assert "on the 1 core poft" in shared_cpu(CpuThreads(1, 1, None, 1), 1.5, machine_cpus=1)


def test_fit_cpu_threads_says_a_shared_cpu_once_on_the_main_process(monkeypatch, capsys):
    import torch

    import poft.console
    from poft.device import CpuThreads, fit_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(poft.console, "_SAID", set())
    monkeypatch.setattr("os.getloadavg", lambda: (5.2, 4.0, 3.0))  # the faked 1-, 5-, 15-minute loads
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plan = CpuThreads(2, 2, None, 1)
    try:
        monkeypatch.setenv("RANK", "1")
        fit_cpu_threads(plan)
        assert capsys.readouterr().out == ""  # another process of a torchrun run says nothing
        poft.console._SAID.clear()
        monkeypatch.setenv("RANK", "0")
        fit_cpu_threads(plan)
        fit_cpu_threads(plan)  # score, then train in one process: said once
        out = capsys.readouterr().out
        line = "poft: the CPU is shared (load 5.2 on the 2 cores poft uses): timings will be slower\n"
        assert out.count(line) == 1
        monkeypatch.setattr("os.getloadavg", lambda: (0.3, 0.2, 0.1))
        poft.console._SAID.clear()
        fit_cpu_threads(plan)
        assert "shared" not in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
