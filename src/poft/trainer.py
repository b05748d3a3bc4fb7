"""PoFTTrainer: TRL's SFTTrainer with the PoFT objective (options: `training_configs.PoFTConfig`). Thin: the
math is in loss.py.

What changes relative to SFTTrainer, and nothing else (LoRA, DeepSpeed/FSDP, gradient checkpointing and
every other TRL option work as in SFT):
- `objective` chooses PoFT, bi-PoFT, PoFT with tau fixed (fixed_tau.py) or plain SFT; TRL's own `loss_type`
  keeps TRL's meaning ('nll' | 'dft'), so `objective='sft', loss_type='dft'` is TRL's DFT, a baseline on the
  same tokens; `sft_path='chunked'` computes SFT's loss on PoFT's path (`response_log_probs`), at PoFT's cost;
- conversations are encoded by poft.chat under the target's own template: labels cover the response
  tokens only (assistant contents + end-of-turn), for every objective, so SFT and PoFT see the same tokens;
- the reference score (and bi-PoFT direction) columns survive TRL's preparation and collation;
- compute_loss turns TRL's fused per-token log-probs (no [tokens x vocab] logits kept) into per-example
  scores r_theta and applies `poft_loss`, averaged over the examples of the whole optimizer step
  (all micro-batches and all processes), so gradient accumulation and data parallelism give one update.

Route of a training dataset, each module entered once, top to bottom:
    readers.read_sft        (`poft train`: the file, read once; a Dataset given in Python is read here)
    training_data           tokens + response labels (chat.ChatFormat), scores, stale-score check, bad rows
    trainer                 TRL's preparation and collation with the score columns; compute_loss
    loss                    poft_loss on the per-example scores
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from .checkpoints import resolve_resume
from .fixed_tau import initial_tau, tau_of_rows
from .io_errors import write_failed
from .logprobs import response_log_probs
from .loss import (
    bi_poft_loss,
    bi_poft_weight,
    fixed_tau_loss,
    normalize_scores,
    packed_sequence_logprob_sums,
    poft_loss,
    poft_weight,
    sequence_logprob_sums,
    token_loss,
)
from .readers import SFTRows, read_sft
from .records import WEIGHT_BY_LABEL, RowWeights, RunRecord
from .training_configs import PoFTConfig
from .training_data import (
    ROW_COLUMN,
    SCORE_COLUMNS,
    SEQUENCE_COLUMNS,
    pack_with_scores,
    prepare_training_dataset,
    scores_per_sequence,
    spread_scores_over_tokens,
)


def _load_tokenizer(model_name_or_path: str, trust_remote_code: bool = False):
    """The target's tokenizer, with an error that names the model folder when it cannot be loaded. Code shipped
    with the model runs only with trust_remote_code (never asked for: transformers would prompt)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises several types here; keep the cause, name the folder
        raise ValueError(f"{model_name_or_path}: could not load the target's tokenizer: {e}") from e


class NonFiniteTrainingError(RuntimeError):
    """The loss or the gradient of a step is NaN or infinite: training stops before the update."""


class CheckpointWriteError(OSError):
    """A checkpoint or the trained model could not be written (full disk); a partial checkpoint folder is
    skipped on resume."""


@dataclass
class ScoreCollator:
    """Wraps TRL's collator and adds the per-sequence score columns as float32 tensors [number of sequences].

    With padding-free / packed rows the sequences are those of the flattened row, in order.
    """

    inner: Callable[[list[dict]], dict]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        for key in SEQUENCE_COLUMNS:
            if key not in examples[0]:
                continue
            values = [value for example in examples for value in scores_per_sequence(example, key)]
            batch[key] = torch.tensor(values, dtype=torch.int64 if key == ROW_COLUMN else torch.float32)
        return batch


class PoFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is PoFT / bi-PoFT (or, with objective='sft', TRL's own loss unchanged).

    `args.uses_scores` is the one switch between the two: reference-score columns, the score collator, the
    example count of a step and the PoFT loss exist only when it is true.
    """

    _tag_names = ["trl", "sft", "poft"]

    def __init__(self, model, args: PoFTConfig | None = None, **kwargs):
        args = args if args is not None else PoFTConfig(output_dir="poft-output")
        if not isinstance(args, PoFTConfig):
            raise TypeError(f"PoFTTrainer needs a PoFTConfig, got {type(args).__name__}")
        if args.uses_scores and args.packing and args.packing_strategy == "wrapped":
            raise ValueError(
                "packing_strategy='wrapped' cuts sequences apart; PoFT needs whole sequences ('bfd')"
            )
        if isinstance(model, str) and kwargs.get("processing_class") is None:
            kwargs["processing_class"] = _load_tokenizer(model, args.trust_remote_code)
        # rows `readers.read_sft` already read (`poft train` reads its file once) are not read again
        self._read_rows = {}
        for key, name in (("train_dataset", "train"), ("eval_dataset", "eval")):
            if isinstance(kwargs.get(key), SFTRows):
                self._read_rows[name] = kwargs[key]
                kwargs[key] = kwargs[key].dataset
        super().__init__(model, args=args, **kwargs)
        self.add_callback(RunRecord(args.output_dir, auto_logging=args.logging_steps_auto))
        self._batch_rows: list[int] = []  # rows of the optimizer step so far (named if it goes non-finite)
        self.row_weights: RowWeights | None = None  # PoFT / bi-PoFT: row_weights/epoch-N.jsonl
        self._fixed_tau: dict[int, float] | None = None  # poft_fixed_tau: row -> tau, set by train()
        if args.uses_scores:
            self.row_weights = RowWeights.for_rows(args.output_dir, self._read_rows.get("train"))
            self.add_callback(self.row_weights)
            self.data_collator = ScoreCollator(self.data_collator)
            # compute_loss divides by the number of examples in the whole optimizer step (see get_batch_samples)
            self.loss_is_scaled_for_ga = True

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`resume_from_checkpoint`: a checkpoint folder, or `last` / `true` for the latest *complete* one of
        the output folder (a checkpoint cut short by a kill or a full disk is skipped, and said)."""
        resume = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if resume is not None and self.row_weights is not None and self.is_world_process_zero():
            self.row_weights.load_partial(resume)  # the rows its epoch had seen, so the epoch's file is whole
        if self.args.objective == "poft_fixed_tau":  # tau of the model as training starts (fixed_tau.py)
            self._fixed_tau = initial_tau(self, resuming=resume is not None)
        return super().train(resume, *args, **kwargs)

    # ---- guards -----------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteTrainingError(
                f"step {self.state.global_step + 1}: the training loss is {loss.item()}{self._named_rows()}; "
                "stopped before the update (nothing of this step was applied or saved). Check beta, gamma, "
                "the learning rate, the reference scores and the model's weights"
            )
        return loss

    def _named_rows(self) -> str:
        """' (rows: line 3 (id=a), ...)' for the rows of the step so far, as the reader named them."""
        if not self._batch_rows:
            return ""
        read = self._read_rows.get("train")
        ids = self._row_ids(self._batch_rows[:8])
        where = [read.where[i] if read is not None else f"row {i}" for i in self._batch_rows[:8]]
        named = ", ".join(f"{w} (id={i})" if i is not None else w for w, i in zip(where, ids, strict=True))
        more = f", ... {len(self._batch_rows) - 8} more" if len(self._batch_rows) > 8 else ""
        return f" (rows in this step: {named}{more})"

    def _row_ids(self, rows: list[int]) -> list:
        read = self._read_rows.get("train")
        if read is None or "id" not in read.dataset.column_names:
            return [None] * len(rows)
        return read.dataset.select(rows)["id"]

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm)
        value = float(grad_norm) if grad_norm is not None else 0.0
        if not math.isfinite(value):
            raise NonFiniteTrainingError(
                f"step {self.state.global_step + 1}: the gradient norm is {value} (the loss was finite)"
                f"{self._named_rows()}; stopped before the update (nothing of this step was applied or saved). "
                "A very large beta, or a learning rate too high for this model, does this"
            )
        self._batch_rows.clear()
        return grad_norm

    def _save_checkpoint(self, model, trial):
        try:
            if self.row_weights is not None:  # before trainer_state.json, which marks the checkpoint complete
                checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"  # as transformers names it
                folder = os.path.join(self._get_output_dir(trial), checkpoint)
                self.row_weights.save_partial(folder, self.is_world_process_zero())
            return super()._save_checkpoint(model, trial)
        except Exception as e:  # OSError, torch's RuntimeError, safetensors' SafetensorError
            text = str(e)
            if not write_failed(e):
                raise
            folder = f"{self.args.output_dir}/checkpoint-{self.state.global_step}"
            raise CheckpointWriteError(
                errno.ENOSPC,
                f"writing {folder} failed: the disk is full (or the write was refused): "
                f"{' '.join(text.split())[:200]}. That folder is incomplete and is skipped on resume; "
                "free space, then re-run with --resume_from_checkpoint last",
            ) from e

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """transformers' save_model; a full disk while writing the final model names the output folder (a
        checkpoint's own save is named by `_save_checkpoint`)."""
        try:
            return super().save_model(output_dir, _internal_call)
        except Exception as e:
            if _internal_call or not write_failed(e):
                raise
            folder = output_dir or self.args.output_dir
            raise CheckpointWriteError(
                errno.ENOSPC,
                f"writing the trained model to {folder} failed: the disk is full (or the write was refused): "
                f"{' '.join(str(e).split())[:200]}. Free space, then run the same command with "
                "--resume_from_checkpoint last",
            ) from e

    # ---- data -------------------------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        if (
            isinstance(dataset, Dataset)
            and "input_ids" not in dataset.column_names
            and formatting_func is None
        ):
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            read = self._read_rows.get(dataset_name)
            if read is None or read.dataset is not dataset:  # kept: row_weights names the rows by it
                name = f"{dataset_name} dataset"
                read = self._read_rows[dataset_name] = read_sft(
                    dataset, on_bad_row="skip", name=name, report=False
                )
            dataset = prepare_training_dataset(
                read,
                tokenizer,
                max_length=args.max_length,
                ref_score_column=args.ref_score_column if args.uses_scores else None,
                direction_column=args.direction_column if args.objective == "bi_poft" else None,
                on_bad_row=args.on_bad_row,
                dataset_name=dataset_name,
                num_proc=args.dataset_num_proc,
                model_name=getattr(tokenizer, "name_or_path", None) or "target model",
                score_normalization=args.score_normalization if args.uses_scores else None,
                scores_without_fingerprint=args.scores_without_fingerprint,
            )
        elif args.uses_scores:
            if not isinstance(dataset, Dataset) or not set(SCORE_COLUMNS) <= set(dataset.column_names):
                raise ValueError(
                    f"{dataset_name} dataset: PoFT needs a map-style dataset of `messages` (+ reference scores), "
                    f"or pre-tokenised rows with columns {SCORE_COLUMNS}; got {type(dataset).__name__}"
                )
        if not args.uses_scores or not (packing or self.padding_free):
            return super()._prepare_dataset(
                dataset, processing_class, args, packing, formatting_func, dataset_name
            )
        # Padding-free / packed PoFT: TRL's packing keeps only input_ids and labels, so prepare unpacked rows,
        # then spread each sequence's scores over its tokens and pack them along (read back by ScoreCollator)
        dataset = super()._prepare_dataset(
            dataset, processing_class, args, False, formatting_func, dataset_name
        )
        if packing:
            return pack_with_scores(dataset, args.max_length, args.packing_strategy, args.dataset_num_proc)
        return spread_scores_over_tokens(dataset, args.dataset_num_proc)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.args.uses_scores:
            self._signature_columns = [*self._signature_columns, *SEQUENCE_COLUMNS]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """PoFT averages over examples: count the examples of the whole optimizer step, on every process."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not self.args.uses_scores:
            return batch_samples, num_items
        n_examples = torch.tensor(sum(len(b["poft_ref_score"]) for b in batch_samples), device=device)
        if self.args.world_size > 1:
            n_examples = self.accelerator.gather(n_examples[None]).sum()
        return batch_samples, n_examples

    # ---- loss -------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.args.uses_scores:  # the token loss ('nll' or 'dft') on the response labels
            if self.args.sft_path == "chunked":
                return self._token_loss(model, inputs, return_outputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # TRL's own
        ref_scores = inputs.pop("poft_ref_score")
        direction = inputs.pop("poft_direction")
        rows = inputs.pop(ROW_COLUMN, None)
        if rows is not None and model.training:
            self._batch_rows.extend(rows.tolist())
        training_rows = rows if model.training else None
        policy_scores, sums, counts, outputs = self._scores(model, inputs)
        losses, tau = self._losses(policy_scores, ref_scores, direction, training_rows)
        if num_items_in_batch is None:  # evaluation: mean over this batch
            loss = losses.mean()
        else:  # training: mean over the examples of the optimizer step; DDP averages gradients over processes
            loss = losses.sum() / num_items_in_batch * self.accelerator.num_processes
        self._log_poft_metrics(policy_scores, ref_scores, tau, sums, counts, outputs, training_rows)
        if training_rows is not None and self.row_weights is not None:
            as_list = [x.tolist() for x in (ref_scores, policy_scores.detach(), tau)]
            self.row_weights.add(training_rows.tolist(), self.state.global_step + 1, *as_list)
        return (loss, self._plain_outputs(model, inputs)) if return_outputs else loss

    def policy_scores(self, model, inputs: dict) -> torch.Tensor:
        """r_theta of each sequence of a collated batch (its `poft_ref_score` and `poft_row` taken out)."""
        return self._scores(model, inputs)[0]

    def _scores(self, model, inputs: dict):
        """(r_theta [sequences], log-prob sums, token counts, `ResponseLogProbs`) of a batch, with gradients
        where enabled; the remaining score columns are popped before the model sees the batch."""
        inputs.pop("poft_direction", None)
        response_bytes = inputs.pop("poft_response_bytes")
        inputs["use_cache"] = False
        outputs = response_log_probs(model, inputs)  # log-probs [B, T-1] of the labels, no full logits kept
        padding_free = "attention_mask" not in inputs and "position_ids" in inputs  # one row, many sequences
        if padding_free:
            sums, counts = packed_sequence_logprob_sums(
                outputs.log_probs[0], outputs.label_mask[0], inputs["position_ids"][0], len(response_bytes)
            )
        else:
            sums, counts = sequence_logprob_sums(outputs.log_probs, outputs.label_mask)
        scores = normalize_scores(
            sums, counts, normalization=self.args.score_normalization, response_bytes=response_bytes
        )
        return scores, sums, counts, outputs

    def _losses(self, policy_scores, ref_scores, direction, training_rows):
        """(per-example loss, tau) of the objective. poft_fixed_tau trains with each row's tau fixed when
        training began and reports PoFT's own loss and tau in evaluation (its rows have no fixed tau)."""
        args: PoFTConfig = self.args
        if args.objective == "bi_poft":  # signed tau: negative on undesirable rows that are pushed down
            options = self._bi_poft_options()
            return bi_poft_loss(policy_scores, ref_scores, direction, **options), bi_poft_weight(
                policy_scores, ref_scores, direction, **options
            )
        if args.objective == "poft_fixed_tau" and training_rows is not None:
            if self._fixed_tau is None:
                raise RuntimeError("objective 'poft_fixed_tau': the fixed weights are computed by train()")
            tau = tau_of_rows(self._fixed_tau, training_rows, policy_scores)
            return fixed_tau_loss(policy_scores, tau), tau
        losses = poft_loss(policy_scores, ref_scores, beta=args.beta, gamma=args.gamma)
        return losses, poft_weight(policy_scores, ref_scores, beta=args.beta, gamma=args.gamma)

    def _token_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """objective 'sft' on PoFT's path (sft_path 'chunked'): TRL's token loss and normalisation
        (`loss.token_loss`) on `response_log_probs`, the log-probs PoFT's scores are made of."""
        inputs["use_cache"] = False
        outputs = response_log_probs(model, inputs)
        loss = token_loss(
            outputs.log_probs,
            outputs.label_mask,
            loss_type=self.args.loss_type,
            num_items_in_batch=num_items_in_batch,
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:  # as TRL: DDP averages
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        with torch.no_grad():
            sums = torch.stack([-outputs.log_probs.detach().float().sum(), outputs.label_mask.sum().float()])
            nll, tokens = self.accelerator.gather(sums[None]).sum(0).tolist()
        self._metrics["train" if self.model.training else "eval"]["poft/nll"].append(nll / max(tokens, 1.0))
        return (loss, self._plain_outputs(model, inputs)) if return_outputs else loss

    def _plain_outputs(self, model, inputs: dict):
        """The model's own outputs (with logits) for `return_outputs`: one more forward, without gradients."""
        with torch.no_grad():
            return model(**{k: v for k, v in inputs.items() if k != "labels"})

    def _bi_poft_options(self) -> dict:
        args: PoFTConfig = self.args
        return {
            "beta": args.beta,
            "gamma": args.gamma,
            "variant": args.bi_poft_variant,
            "undesirable_target": args.undesirable_target,
            "undesirable_margin": args.undesirable_margin,
            "undesirable_weight": args.undesirable_weight,
        }

    @torch.no_grad()
    def _log_poft_metrics(self, policy_scores, ref_scores, tau, sums, counts, outputs, rows=None) -> None:
        """Sums gathered over processes, then divided: the logged means are over all examples / tokens.
        `rows` (training only): the batch's training rows, for mean tau per row label."""
        policy, ref = policy_scores.detach(), ref_scores.to(policy_scores.device)
        token_metrics = outputs.is_top1 is not None  # TRL's fused kernel computes them, the chunked path not
        zero = counts.sum() * 0.0
        sums_by_name = {
            "policy_score": policy.sum(),
            "ref_score": ref.sum(),
            "margin": (policy - ref).sum(),
            "win_rate": (policy > ref).float().sum(),
            "weight": tau.sum(),
            "nll": -sums.detach().sum(),
            "tokens": counts.sum().float(),
            "examples": torch.tensor(float(len(policy)), device=policy.device),
            "mean_token_accuracy": outputs.is_top1.sum().float() if token_metrics else zero,
            "entropy": outputs.entropy.detach().sum().float() if outputs.entropy is not None else zero,
            **(self.row_weights.tau_by_label(tau, rows) if rows is not None else {}),
        }
        gathered = self.accelerator.gather(torch.stack(list(sums_by_name.values()))[None]).sum(0)
        total = dict(zip(sums_by_name, gathered.tolist(), strict=True))
        per = {"examples": max(total["examples"], 1.0), "tokens": max(total["tokens"], 1.0)}
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name in ("policy_score", "ref_score", "margin", "win_rate", "weight"):
            metrics[f"poft/{name}"].append(total[name] / per["examples"])
        metrics["poft/nll"].append(total["nll"] / per["tokens"])
        if token_metrics:
            metrics["mean_token_accuracy"].append(total["mean_token_accuracy"] / per["tokens"])
            metrics["entropy"].append(total["entropy"] / per["tokens"])
        for name in ("true", "false"):
            if total.get(f"rows_label_{name}", 0) > 0:
                mean = total[f"tau_label_{name}"] / total[f"rows_label_{name}"]
                metrics[f"{WEIGHT_BY_LABEL}{name}"].append(mean)
