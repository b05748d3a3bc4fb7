"""`poft dpo`: the paper's second stage, DPO on preference pairs starting from a PoFT checkpoint.

The paper runs PoFT and then DPO on UltraFeedback (PAPER.md: AlpacaEval 2.0 27.83% vs 25.09% for
SFT+DPO). Nothing here changes DPO: it is TRL's DPOTrainer, started from the folder `poft train` wrote.
Two things are decided here:

- preference rows are normalised to conversational `prompt` / `chosen` / `rejected` lists of messages,
  whether they come explicit (UltraFeedback-binarized: a `prompt` string and full `chosen` / `rejected`
  conversations that repeat it), implicit (no `prompt`: the shared leading turns are the prompt), as
  plain strings, or in LLaMA-Factory's ShareGPT layout (`conversations` of {from, value} up to the reply,
  `chosen` / `rejected` one {from, value} reply each, optional `system`); rows are read by `readers.py`
  (each JSON line parsed once) and a bad row is named by source, line/row, id and field;
- reference log-probs are precomputed once (`precompute_ref_log_probs=True` by default), so no second
  copy of the model sits in memory during training: the reference is the PoFT checkpoint itself, and from
  a LoRA adapter folder base + adapter, never the bare base (`policy_from_adapter`);
- a pair the model's chat template cannot render with every message verbatim in order (it drops, moves or
  rewrites one, or fails: `chat.ChatFormat.render`, the check `poft score` and `poft train` make) is
  dropped with one printed line, or with on_bad_row="error" named in one error, before TRL tokenises it:
  TRL would train on a prompt the template changed, or stop on the first template error without a row.
"""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import DPOTrainer

from .chat import ChatFormat, ChatTemplateError
from .console import BadRow, input_order, refuse_or_skip, say
from .readers import RowError, read_message, read_rows, row_id, sharegpt_turns, text_or_messages

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


class PoFTDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer (with a PoFTDPOConfig); pairs the model's chat template cannot render verbatim are
    dropped or named first (`check_pair_templates`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .records import RunRecord

        self.add_callback(RunRecord(self.args.output_dir))  # log.jsonl, trainer_state.json, curves.png

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`resume_from_checkpoint`: a folder, or `last` / `true` = the latest complete checkpoint."""
        from .checkpoints import resolve_resume

        return super().train(resolve_resume(resume_from_checkpoint, self.args.output_dir), *args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if isinstance(dataset, Dataset) and set(PREFERENCE_COLUMNS) <= set(dataset.column_names):
            dataset = check_pair_templates(dataset, processing_class, args.on_bad_row, dataset_name)
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def policy_from_adapter(adapter: str, config, continue_adapter: bool) -> tuple[object, object]:
    """(policy model, tokenizer) for DPO from a PEFT adapter folder, whose reference must be the model PoFT
    trained, base + adapter, and not the bare base.

    `continue_adapter` (`--use_peft`): the adapter itself is trained on (its own LoRA settings); TRL's
    DPOTrainer, given a PeftModel, computes the reference with a frozen copy of it (the "ref" adapter), so
    only the adapter's weights are held twice, and the output is again an adapter on the same base. Without
    it: the adapter is merged into the base in memory and the whole model is trained, its starting weights
    being the reference. The tokenizer is the adapter folder's: its chat template is the one PoFT used.
    `config.model_init_kwargs` (dtype, attention) load the base; the model is built here, so they are cleared.
    """
    from .adapters import adapter_config, base_model, load_adapter_model, load_merged, load_tokenizer

    kwargs = {k: v for k, v in (config.model_init_kwargs or {}).items() if k != "revision"}
    config.model_init_kwargs = None
    base = base_model(adapter)
    if continue_adapter:
        settings = adapter_config(adapter)
        _check_reference_copy(settings)
        say(
            f"{adapter} is an adapter on {base}: DPO trains it on (r={settings.get('r')}, "
            f"alpha={settings.get('lora_alpha')}; --lora_* options are not used); the reference is a frozen "
            "copy of it"
        )
        model = load_adapter_model(adapter, trainable=True, **kwargs)
    else:
        say(
            f"{adapter} is an adapter on {base}: merged into it, the whole model is trained (--use_peft to train "
            "the adapter on); the reference is base + adapter"
        )
        model = load_merged(adapter, **kwargs)
    return model, load_tokenizer(adapter)


def _check_reference_copy(settings: dict) -> None:
    """TRL copies an adapter as its reference except for a LoRA on `target_parameters` under peft < 0.20, where
    it would take the bare base as the reference instead: refused here."""
    import peft
    from packaging.version import Version

    if settings.get("target_parameters") and Version(peft.__version__) < Version("0.20.0"):
        raise ValueError(
            f"this adapter targets parameters (target_parameters), which peft {peft.__version__} cannot copy as "
            "DPO's reference: upgrade peft to 0.20 or later, or leave out --use_peft to train the merged model"
        )


def drop_reference_copy(model) -> None:
    """Before the output is saved: TRL holds the frozen reference copy of a continued adapter as a second
    adapter, "ref", which peft would save beside the trained one (in `ref/`); the output is the trained one."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and "ref" in model.peft_config:
        model.delete_adapter("ref")


def check_pair_templates(
    pairs: Dataset, tokenizer: PreTrainedTokenizerBase, on_bad_row: str = "skip", name: str = "train"
) -> Dataset:
    """Drop (on_bad_row="skip", one printed line) or refuse (one error naming them) the pairs whose prompt +
    chosen or prompt + rejected the tokenizer's chat template does not render verbatim in order. When no pair
    would be left, they are refused whatever on_bad_row says."""
    chat = ChatFormat.from_tokenizer(tokenizer, tokenizer.name_or_path or "the model")
    problems = {i: problem for i, pair in enumerate(pairs) if (problem := _render_problem(chat, pair))}
    if not problems:
        return pairs
    bad = [BadRow(row=f"pair {i}", id=None, problem=problem) for i, problem in problems.items()]
    what = (
        f"{name} dataset: {len(bad)} of {len(pairs)} preference pairs cannot be rendered verbatim by the chat "
        "template"
    )
    hint = "set on_bad_row='skip' to drop them"
    if len(bad) == len(pairs):  # dropping them all would leave nothing to train on
        on_bad_row, hint = "error", "use a model whose chat template renders them"
    refuse_or_skip(bad, what, on_bad_row, ChatTemplateError, hint)
    return pairs.select([i for i in range(len(pairs)) if i not in problems])


def _render_problem(chat: ChatFormat, pair: dict) -> str:
    """Why the chat template cannot render this pair's prompt + chosen or prompt + rejected ("" when it can)."""
    for side in ("chosen", "rejected"):
        try:
            chat.render(pair["prompt"] + pair[side])
        except ChatTemplateError as e:
            return f"prompt + {side}: {e}"
    return ""


def _as_messages(value: object, field_name: str, role: str) -> list[dict]:
    messages = text_or_messages(value, field_name, role)
    return [read_message(m, f"{field_name}[{i}]") for i, m in enumerate(messages)]


def _sharegpt_pair(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """LLaMA-Factory's preference layout: `conversations` ({from, value} turns up to the reply), `chosen` and
    `rejected` as one {from, value} reply (or a list), and an optional `system` prompt."""
    prompt = sharegpt_turns(row["conversations"], "conversations")
    if isinstance(row.get("system"), str) and row["system"]:
        prompt = [{"role": "system", "content": row["system"]}, *prompt]
    return (
        prompt,
        sharegpt_turns(row.get("chosen"), "chosen"),
        sharegpt_turns(row.get("rejected"), "rejected"),
    )


def normalize_preference_row(row: dict) -> dict:
    """One preference row -> conversational {prompt, chosen, rejected}; chosen / rejected keep only replies."""
    if row.get("conversations") is not None:
        prompt, chosen, rejected = _sharegpt_pair(row)
    else:
        chosen = _as_messages(row.get("chosen"), "chosen", "assistant")
        rejected = _as_messages(row.get("rejected"), "rejected", "assistant")
        prompt = _as_messages(row["prompt"], "prompt", "user") if row.get("prompt") is not None else []
    if prompt and chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
        chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]
    elif not prompt:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not prompt:
        raise RowError("no prompt: give a `prompt` column or conversations that start with the same turns")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply or reply[-1]["role"] != "assistant":
            raise RowError(f"{name} does not end with an assistant reply after the prompt")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def load_preferences(source: str | Dataset, split: str = "train", config: str | None = None) -> Dataset:
    """Read preference pairs through `readers.read_rows` and normalise them (`normalize_preference_row`).

    Every row that cannot be read (a line that is not a JSON object, a field that is not a conversation) is
    named in one error: source, line/row, id and field.
    """
    raw = read_rows(source, split, config)
    missing = [c for c in ("chosen", "rejected") if c not in raw.columns]
    if missing and len(raw):
        raise ValueError(
            f"{raw.source}: preference data needs `chosen` and `rejected` (and usually `prompt`); "
            f"missing {missing} (columns: {raw.columns})"
        )
    pairs, bad = [], list(raw.bad)
    for i, row in enumerate(
        raw.iter_rows([*PREFERENCE_COLUMNS, "conversations", "system", "id", "prompt_id"])
    ):
        try:
            pairs.append(normalize_preference_row(row))
        except RowError as e:
            bad.append(BadRow(row=raw.where(i), id=row_id(row), problem=str(e)))
    what = f"{raw.source}: {len(bad)} of {len(raw) + len(raw.bad)} rows cannot be read as preference pairs"
    refuse_or_skip(input_order(bad), what, "error", RowError, hint="remove them from the file")
    if not pairs:
        raise ValueError(f"{raw.source}: no rows")
    say(f"{raw.source} [{split}]: {len(pairs)} preference pairs (conversational prompt/chosen/rejected)")
    return Dataset.from_list(pairs)
