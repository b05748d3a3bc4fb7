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
