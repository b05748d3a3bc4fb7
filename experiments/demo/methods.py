"""The methods the demo compares: each is a PoFTTrainer setting plus, for some, a change to the training rows.

Every method trains the same initial target on the same scored rows for the same number of epochs, at its
own learning rate (config.LEARNING_RATES, chosen on the validation prompts by `python -m experiments.tune`):

- sft:             TRL's token cross-entropy on the response tokens (the paper's baseline).
- dft:             TRL's DFT (`loss_type: dft`: each token's NLL times its detached probability), objective sft.
- poft:            PoFT, -logsigmoid(beta * (r_theta - r_ref) + gamma).
- poft_fixed_tau:  PoFT with every r_ref set to +100, so tau = 1 on every row: the per-example mean CE that
                   PoFT's gradient is, with the information in ref_score removed (a constant tau's level is a
                   learning-rate scale, which the tuned learning rate absorbs). poft minus this = what r_ref adds.
- top40_sft:       the paper's filtering: keep the top 40 % of rows by r_ref (`poft filter --keep-top 0.4`'s
                   selection), then SFT; top40_poft: the same rows, then PoFT ("filtering stacks with PoFT").
- bi_poft_soft / bi_poft_margin / bi_poft_signed: bi-PoFT (rows labelled undesirable are pushed below the aligned
                   models) with the bounded soft-target loss, the margin loss, or the original unbounded one
                   (poft.loss.bi_poft_loss). Without undesirable rows (noise 0) each is PoFT exactly: not run.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from poft.filtering import select_rows


@dataclass(frozen=True)
class Method:
    """How one method trains: PoFTTrainer's objective / loss_type / bi-PoFT variant, and its rows."""

    objective: str  # "sft" | "poft" | "bi_poft"
    loss_type: str = "nll"
    keep_top: float | None = None  # keep this share of rows by ref_score first (the paper's filtering)
    fixed_tau: bool = False  # r_ref := +100 on every row: tau == 1
    bi_poft_variant: str = "soft"

    @property
    def needs_noise(self) -> bool:
        """bi-PoFT equals PoFT when no row is labelled undesirable: such runs are skipped."""
        return self.objective == "bi_poft"


METHODS: dict[str, Method] = {
    "sft": Method("sft"),
    "dft": Method("sft", loss_type="dft"),
    "poft": Method("poft"),
    "poft_fixed_tau": Method("poft", fixed_tau=True),
    "top40_sft": Method("sft", keep_top=0.4),
    "top40_poft": Method("poft", keep_top=0.4),
    "bi_poft_soft": Method("bi_poft", bi_poft_variant="soft"),
    "bi_poft_margin": Method("bi_poft", bi_poft_variant="margin"),
    "bi_poft_signed": Method("bi_poft", bi_poft_variant="signed"),
}


def method_rows(method: Method, data: Dataset) -> Dataset:
    """The rows `method` trains on: all scored rows, the top share by ref_score, or r_ref replaced."""
    if method.keep_top is not None:
        data = data.select(select_rows(data["ref_score"], keep_top=method.keep_top).tolist())
    if method.fixed_tau:
        data = data.map(lambda row: {"ref_score": 100.0})
    return data
