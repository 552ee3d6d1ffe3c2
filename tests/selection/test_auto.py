"""``labelzip.selection``: the group sample, the candidates and the auto choice."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

import pytest
import torch

from labelzip.archive import ArchiveMetadata, Layout
from labelzip.codecs.prune import keep_per_group
from labelzip.errors import ConfigError, InputError, UnreachableTargetError
from labelzip.rate import RateGoal
from labelzip.selection.auto import (
    BUDGET_STEP,
    LM_CANDIDATES,
    AutoChoice,
    AutoConfig,
    Candidate,
    CandidateResult,
    Target,
    candidates_for,
    choose_codec,
    choose_from_rows,
    format_table,
    neighbour_budgets,
    pick_candidate,
)
from labelzip.selection.sample import (
    GroupShape,
    LabelSample,
    draw_sample,
    split_views,
)
from labelzip.selection.score import FREE_ERROR


def _source(
    labels: torch.Tensor, size: int = 100
) -> Callable[[], Iterator[torch.Tensor]]:
    flat = labels.reshape(-1, labels.shape[-1])

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, flat.shape[0], size):
            yield flat[start : start + size]

    return batches


def _views(n: int, e: int, c: int, noise: float, seed: int = 0) -> torch.Tensor:
    """(n, e, c) view logits: a per-sample base plus per-view noise."""
    gen = torch.Generator().manual_seed(seed)
    base = 3 * torch.randn(n, 1, c, generator=gen)
    return base + noise * torch.randn(n, e, c, generator=gen)


@pytest.mark.parametrize(
    ("dims", "shape"), [(("sample", "view"), (40, 6)), (("epoch", "sample"), (6, 40))]
)
def test_draw_sample_takes_whole_groups_with_their_flat_indices(
    dims: tuple[str, ...], shape: tuple[int, ...]
) -> None:
    labels = torch.randn(*shape, 7)
    sample = draw_sample(
        _source(labels), dims, shape, max_labels=60, held_fraction=0.25, seed=3
    )
    flat_labels = labels.reshape(-1, 7)
    for rows, flat in (
        (sample.fit_rows, sample.fit_flat),
        (sample.held_rows, sample.held_flat),
    ):
        assert rows.shape[1] == 6 and flat.shape == rows.shape[:2]
        assert torch.equal(rows, flat_labels[flat])
    groups = GroupShape.of(dims, shape)
    # every group's views share their non-view coordinates (one sample each)
    view_axis = 0 if dims[0] == "epoch" else 1
    assert groups.views == 6
    coords = torch.stack(torch.unravel_index(sample.held_flat, shape), dim=-1)
    other = coords[..., 1 - view_axis]
    assert torch.equal(other, other[:, :1].expand_as(other))
    assert sample.fit_rows.shape[0] + sample.held_rows.shape[0] == 10
    fit, held = (
        set(sample.fit_flat.reshape(-1).tolist()),
        set(sample.held_flat.reshape(-1).tolist()),
    )
    assert not fit & held
    again = draw_sample(
        _source(labels, 33), dims, shape, max_labels=60, held_fraction=0.25, seed=3
    )
    assert torch.equal(again.held_flat, sample.held_flat)


def test_draw_sample_checks_the_label_count() -> None:
    with pytest.raises(InputError, match="layout"):
        draw_sample(
            _source(torch.randn(50, 4)),
            ("sample",),
            (60,),
            max_labels=10,
            held_fraction=0.5,
            seed=0,
        )
    with pytest.raises(InputError, match="at least 2 samples"):
        LabelSample.from_rows(torch.randn(1, 4), 0.5, 0)


def _target(labels: torch.Tensor, dims: tuple[str, ...], ratio: float) -> Target:
    return Target(
        RateGoal(ratio=ratio), Layout(dims, tuple(labels.shape[:-1])), labels.shape[-1]
    )


def _choose(
    labels: torch.Tensor, config: AutoConfig, ratio: float = 20.0
) -> AutoChoice:
    dims = ("sample", "view")
    sample = draw_sample(
        _source(labels),
        dims,
        tuple(labels.shape[:-1]),
        max_labels=config.max_sample_labels(labels.shape[-1]),
        held_fraction=config.held_fraction,
        seed=config.seed,
    )
    return choose_codec(sample, _target(labels, dims, ratio), config)


FAST = AutoConfig(codecs=("topk",), sample_labels=2048, keep_fractions=(1.0, 0.5, 0.25))


def test_redundant_views_choose_a_view_budget_below_one() -> None:
    choice = _choose(_views(200, 8, 100, noise=0.02), FAST)
    assert choice.winner.keep_fraction < 1.0
    kept = sorted({r.candidate.keep_fraction for r in choice.results}, reverse=True)
    # the fewest views tried won, so auto went on to smaller budgets, each
    # BUDGET_STEP smaller, down to 1 of 8 views (2 of 8 at 0.25, then 1)
    assert kept[:3] == [1.0, 0.5, 0.25] and len(kept) == 4
    assert kept[3] == pytest.approx(0.25 / BUDGET_STEP)
    assert keep_per_group(kept[3], 8) == 1


def test_independent_views_keep_every_view() -> None:
    choice = _choose(_views(200, 8, 100, noise=6.0), FAST)
    assert choice.winner.keep_fraction == 1.0
    kept = [r.candidate.keep_fraction for r in choice.results]
    pruned = [
        r.kl for r, k in zip(choice.results, kept, strict=True) if k <= 0.5 and r.kl
    ]
    full = min(r.kl for r in choice.results if r.candidate.keep_fraction == 1 and r.kl)
    assert pruned and min(pruned) > 1.5 * full  # a stand-in view is a different label
    # the winner's codec was measured one BUDGET_STEP below its budget too (6 of 8)
    assert 1 / BUDGET_STEP in kept


def test_neighbour_budgets_are_the_picks_codec_one_step_either_side() -> None:
    """Between two halvings (38 and 75 of 300 views) the pick's codec is measured
    at 53 too; counts it was measured at, or other codecs', do not matter."""
    labels = torch.zeros(4, 300, 10)
    target = _target(labels, ("sample", "view"), 40.0)
    ctx = Candidate("ctx-transform", {"min_label_bits": 0.0}, 0.125)
    measured = [
        CandidateResult(Candidate(ctx.codec, ctx.options, keep))
        for keep in (1.0, 0.5, 0.25, 0.125, 0.125 / BUDGET_STEP)
    ] + [CandidateResult(Candidate("vqae", {}, 0.125 * BUDGET_STEP))]
    near = neighbour_budgets(ctx, measured, target)
    assert [c.codec for c in near] == ["ctx-transform"]
    assert near[0].options == ctx.options
    assert keep_per_group(near[0].keep_fraction, 300) == 53
    # at every view only the smaller side exists; both sides are new here
    every = [CandidateResult(Candidate("vqae", {}, 1.0)), measured[-1]]
    whole = neighbour_budgets(every[0].candidate, every, target)
    assert [keep_per_group(c.keep_fraction, 300) for c in whole] == [212]
    odd = neighbour_budgets(Candidate("topk", {}, 8 / 300), [], target)
    assert [keep_per_group(c.keep_fraction, 300) for c in odd] == [11, 6]


def test_codec_error_below_the_free_level_is_not_charged() -> None:
    """Two candidates whose stored labels are within FREE_ERROR of their teacher
    labels: the one storing more views (less reuse) wins although its codec
    error is larger; above the free level the credit changes no order."""

    def result(keep: float, views: int, source: float, used: float) -> CandidateResult:
        return CandidateResult(
            Candidate("ctx-transform", {}, keep),
            total_bytes=1000,
            kl=used,
            top1=0.9,
            stored_top1=0.9,
            stored_top2=1.0,
            group_kl=torch.full((8,), used),
            group_source_kl=torch.full((8,), source),
            stored_views=views,
            num_classes=10,
        )

    config = AutoConfig().for_labels(lm=False)
    # 38 views: error 0.0014, mismatch 0.153; 53 views: error 0.004, mismatch 0.145
    few = result(0.125, 38, 0.0014, 0.0014 + 0.153)
    more = result(0.177, 53, 0.004, 0.004 + 0.145)
    assert few.score(None) == pytest.approx(2 / 38 * 0.153)
    assert more.score(None) == pytest.approx(0.004 - FREE_ERROR + 2 / 53 * 0.145)
    # without the credit the fewer views would win: 0.0095 against 0.0095 + 0.0001
    assert few.score(None) + 0.0014 < more.score(None) + FREE_ERROR
    assert pick_candidate([few, more], config).keep_fraction == 0.177
    # both errors far above the free level: the same credit for each, and the
    # codec error decides as before
    coarse = result(0.125, 38, 0.0300, 0.0300 + 0.153)
    coarser = result(0.177, 53, 0.0340, 0.0340 + 0.145)
    assert pick_candidate([coarse, coarser], config).keep_fraction == 0.125
    assert coarse.score(None) - coarser.score(None) == pytest.approx(
        (0.0300 + 2 / 38 * 0.153) - (0.0340 + 2 / 53 * 0.145)
    )


def test_record_lists_every_candidate_and_is_deterministic() -> None:
    labels = _views(400, 4, 60, noise=1.0)
    config = AutoConfig(
        codecs=("topk", "rskd", "vqae"),
        steps=20,
        confirm_steps=40,
        keep_fractions=(1.0, 0.5),
        record_share=1.0,
    )
    first, second = _choose(labels, config, 10), _choose(labels, config, 10)
    assert first.to_dict() == second.to_dict()
    record = first.to_dict()
    assert (
        len(record["candidates"]) == len(first.results) >= 2 * 5
    )  # 3 topk, rskd, vqae
    assert "fit_seconds" not in record["candidates"][0]  # archive bytes stay fixed
    assert {c["codec"] for c in record["candidates"]} == {"topk", "rskd", "vqae"}
    for row in record["candidates"]:
        assert row["kl"] >= 0 and 0 <= row["top1"] <= 1
        assert 9 < row["ratio"]  # the estimated all-in size meets the target
        if "k" not in row["options"]:  # a fixed k may land well under it
            assert row["ratio"] < 13
    lines = format_table(first.to_dict(report=True))
    assert lines[0].startswith("auto chose") and sum("*" in ln for ln in lines[1:]) == 1

    small = _choose(labels, config.model_copy(update={"record_share": 0.05}), 10)
    winner_only = small.to_dict()
    assert small.rows == "winner"
    assert winner_only["omitted"] == len(small.results) - 1
    assert [r["codec"] for r in winner_only["candidates"]] == [small.winner.codec]
    assert len(small.to_dict(report=True)["candidates"]) == len(small.results)
    assert "other candidates measured" in format_table(winner_only)[-1]

    tiny = _choose(labels, config.model_copy(update={"record_share": 0.0}), 10)
    alone = tiny.to_dict()
    assert tiny.rows == "none" and tiny.winner == small.winner
    assert alone == {
        "chosen": winner_only["chosen"],
        "omitted": len(tiny.results),
    }
    assert len(json.dumps(alone)) < len(json.dumps(winner_only)) / 2
    assert len(tiny.to_dict(report=True)["candidates"]) == len(tiny.results)
    (line,) = format_table(alone)
    assert line.startswith(f"auto chose {tiny.winner.name}") and "not stored" in line


def _measured(
    codec: str,
    score: float,
    top2: float | None,
    options: dict[str, object] | None = None,
    keep: float = 1.0,
) -> CandidateResult:
    groups = torch.full((40,), score) + 1e-4 * torch.arange(40)
    return CandidateResult(
        Candidate(codec, options or {}, keep),
        total_bytes=1000,
        kl=float(groups.mean()),
        top1=0.9,
        stored_top1=0.9,
        stored_top2=top2,
        group_kl=groups,
        group_source_kl=groups,
    )


def test_labels_that_lose_the_teachers_top_two_are_set_aside_while_others_keep_them() -> (
    None
):
    config = AutoConfig().for_labels(lm=False)
    coarse = _measured("vqae", 0.020, 0.48)  # the lower KL, top two lost
    exact = _measured("topk", 0.025, 1.0)
    assert pick_candidate([coarse, exact], config) == exact.candidate
    # unknown top-2 (an old record, or no stored labels) counts as kept
    assert pick_candidate([coarse, _measured("rskd", 0.03, None)], config).codec == (
        "rskd"
    )
    # a share a hair under 0.75 (MNIST SRe2L at 100x, one sample of four) is kept,
    # so its tie with a coarser codec on more views goes to the cheaper codec
    exact_13 = _measured("ctx-transform", 0.03277, 0.7488, keep=13 / 300)
    coarser_19 = _measured("vqae-ctx", 0.03248, 0.7672, keep=19 / 300)
    assert pick_candidate([exact_13, coarser_19], config) == exact_13.candidate
    assert pick_candidate([exact_13, _measured("vqae-ctx", 0.028, 0.733)], config) == (
        exact_13.candidate
    )
    # when no candidate keeps them, the score alone decides
    also_coarse = _measured("topk", 0.025, 0.10)
    assert pick_candidate([coarse, also_coarse], config) == coarse.candidate
    choice = AutoChoice(
        winner=exact.candidate,
        results=(coarse, exact),
        config=config,
        fit_labels=100,
        held_labels=40,
        reference_total=20_000,
        seconds=0.0,
    )
    lines = format_table(choice.to_dict(report=True))
    assert (
        "set aside (stored top-2 0.480 < 0.74)" in lines[1]
        and "stored top-2 1.00" in lines[2]
    )
    assert "set aside" not in lines[2]


def test_finalist_refits_go_to_candidates_the_pick_may_choose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labelzip.selection import auto as auto_module

    coarse = _measured("vqae", 0.020, 0.50)  # lowest score, top two lost
    kept = _measured("vqae", 0.030, 0.90, keep=0.5)
    exact = _measured("topk", 0.025, 1.0)
    refit: list[Candidate] = []

    def measure(cand: Candidate, *args: object, **kw: object) -> CandidateResult:
        refit.append(cand)
        return _measured(cand.codec, 0.024, 0.90, keep=cand.keep_fraction)

    monkeypatch.setattr(auto_module, "_measure", measure)
    config = AutoConfig(steps=300, confirm_steps=1000)
    pool, rows = auto_module._confirm([coarse, kept, exact], None, None, config)  # type: ignore[arg-type]
    # the winner is top-k (not learned); the learned runner-up the pick may choose
    # is vqae on half the views, not the set-aside vqae with the lower score
    assert refit == [kept.candidate]
    assert pick_candidate(pool, config) == kept.candidate  # its long fit won
    assert len(rows) == 4


def test_a_tie_between_option_sets_of_one_codec_goes_to_more_views() -> None:
    plain = _measured("topk", 0.0255, 1.0, {"decoder": "ms"}, keep=7 / 300)
    fixed_k = _measured("topk", 0.0256, 1.0, {"decoder": "ms", "k": 2}, keep=8 / 300)
    vqae = _measured("vqae", 0.0255, 1.0, keep=9 / 300)
    # the table order puts plain top-k first, but both are top-k: more views win;
    # a tie with another codec still goes to the cheaper codec
    assert pick_candidate([plain, fixed_k, vqae], AutoConfig()) == fixed_k.candidate


def test_winner_is_never_worse_than_topk_beyond_noise() -> None:
    labels = _views(400, 4, 60, noise=1.0)
    config = AutoConfig(
        codecs=("topk", "vqae"), steps=30, confirm_steps=30, keep_fractions=(1.0,)
    )
    choice = _choose(labels, config, 10)
    assert all(r.skipped is None for r in choice.results)
    by_name = {r.candidate.name: r for r in choice.results}
    win = by_name[choice.winner.name]
    best_topk = min(
        r.kl for r in choice.results if r.candidate.codec == "topk" and r.kl
    )
    assert win.kl is not None and win.kl <= best_topk * 1.01 + 1e-6


def test_finalists_are_refit_longer_and_the_pick_uses_their_long_fits() -> None:
    labels = _views(400, 4, 60, noise=1.0)
    config = AutoConfig(
        codecs=("topk", "vqae"), steps=20, confirm_steps=60, keep_fractions=(1.0, 0.5)
    )
    choice = _choose(labels, config, 10)
    long = [r for r in choice.results if r.steps is not None]
    # the winner if learned, and the best other learned candidate: at most two
    assert 1 <= len(long) <= 2 and all(r.candidate.codec == "vqae" for r in long)
    assert all(r.steps == 60 for r in long)
    first = [r.candidate for r in choice.results if r.steps is None]
    assert all(r.candidate in first for r in long)  # refits of measured candidates
    chosen = choice.to_dict()["chosen"]
    assert chosen.get("steps") == (60 if choice.winner.codec == "vqae" else None)
    lines = format_table(choice.to_dict(report=True))
    assert "finalists refit at 60 steps" in lines[0]
    assert sum("*" in ln for ln in lines[1:]) == 1
    # confirm_steps <= steps: no second round
    plain = _choose(labels, config.model_copy(update={"confirm_steps": 20}), 10)
    assert all(r.steps is None for r in plain.results)
    assert "steps" not in plain.to_dict()["chosen"]


def test_unreachable_target_is_one_line() -> None:
    with pytest.raises(UnreachableTargetError, match=r"none of \d+ candidates") as info:
        _choose(
            _views(20, 2, 50, noise=1.0),
            AutoConfig(codecs=("topk",), keep_fractions=(1.0,)),
            ratio=5000,
        )
    assert "\n" not in str(info.value)


def test_lm_vocabulary_uses_the_lm_codecs() -> None:
    target = Target(RateGoal(ratio=100), Layout(("sample",), (1000,)), 9000)
    names = {c.codec for c in candidates_for(target, AutoConfig(), has_views=False)}
    assert names == {c for c, _ in LM_CANDIDATES}
    assert "vqae" not in names and "dense" not in names
    with pytest.raises(ConfigError, match="do not apply"):
        candidates_for(target, AutoConfig(codecs=("vqae",)), has_views=False)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        AutoConfig(keep_fractions=(0.0,))
    with pytest.raises(ValueError):
        AutoConfig(temperature=-1)


def test_view_split_scores_held_out_views_and_skips_budgets_with_nothing_to_fit() -> (
    None
):
    labels = _views(100, 8, 20, noise=0.5)  # (samples, views, C)
    flat = torch.arange(800).reshape(100, 8)
    sample = split_views(labels, flat, 0.25, seed=0)
    assert sample.held_views is not None
    assert sample.held_views.sum(dim=1).tolist() == [2] * 100  # 2 of 8 per sample
    assert (sample.fit_labels, sample.held_labels) == (600, 200)
    target = _target(labels, ("sample", "view"), 4.0)
    config = AutoConfig(keep_fractions=(1.0,))
    every = Candidate("topk", {"decoder": "ms", "temperature": 4.0}, 1.0)
    choice = choose_codec(sample, target, config, candidates=[every])
    assert choice.results[0].kl is not None and choice.held_labels == 200
    # one kept view per sample: fitted on the kept views that are not scored
    # (stand-ins included, as the archive fits every label it stores) ...
    one = Candidate("topk", {"decoder": "ms", "temperature": 4.0}, 1 / 8)
    pruned = choose_codec(sample, target, config, candidates=[one]).results[0]
    assert pruned.kl is not None and pruned.stored_views == 1
    # ... a pruned view costs its stand-in's error plus 2/m of the reuse
    # mismatch, at most all of it (m = 1 here)
    assert pruned.score(None) == pytest.approx(pruned.score(1.0))
    assert pruned.group_source_kl is not None and pruned.group_kl is not None
    assert float(pruned.group_source_kl.mean()) < float(pruned.group_kl.mean())
    assert pruned.score(0.0) < pruned.score(1.0)
    # with every view scored, nothing is left to fit: skipped with its reason
    every_view = LabelSample(labels, flat, labels, flat, torch.ones(100, 8, dtype=bool))
    with pytest.raises(UnreachableTargetError, match="is a held-out"):
        choose_codec(every_view, target, config, candidates=[one])


@pytest.mark.parametrize(
    ("record_share", "ratio", "rows"),
    [(0.0, 12.0, "none"), (0.15, 12.0, "winner"), (1.0, 3.0, "all")],
)
def test_candidates_are_charged_for_a_record_at_least_as_large_as_the_real_one(
    monkeypatch: pytest.MonkeyPatch, record_share: float, ratio: float, rows: str
) -> None:
    """The archive's header (with its real auto record) must not outgrow the one
    the candidates were fitted against: a winner at its codec's own largest
    fitting view budget (a long keep fraction like 0.0566...) once failed its
    final fit because the compact record's stand-in had no winner row."""
    from labelzip.rate import ArchiveTarget, target_header_bytes
    from labelzip.selection import auto as auto_module
    from labelzip.selection.record import with_auto_record

    charged: list[ArchiveTarget] = []
    real_fit = auto_module.fit_codec

    def spy(name: str, source: object, options: object, **kw: object) -> object:
        target = kw["target"]
        assert isinstance(target, ArchiveTarget)
        charged.append(target)
        return real_fit(name, source, options, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(auto_module, "fit_codec", spy)
    labels = _views(400, 7, 10, noise=0.3)  # 7 views: fitting budgets like 3/7
    config = AutoConfig(
        codecs=("topk", "rskd", "vqae"),
        steps=10,
        confirm_steps=20,
        keep_fractions=(1.0, 0.5),
        record_share=record_share,
    )
    choice = _choose(labels, config, ratio)
    assert charged
    record = choice.to_dict()
    assert choice.rows == rows
    win = choice.winner
    for target in charged:
        final = target.replace(metadata=with_auto_record(ArchiveMetadata(), choice))
        assert target_header_bytes(win.codec, dict(win.options), final) <= (
            target_header_bytes(win.codec, dict(win.options), target)
        ), record


def _lm_rows(n: int, c: int = 2000, seed: int = 0) -> torch.Tensor:
    """Next-token-like logits: a Zipf prior plus per-row noise (flat, long tails)."""
    g = torch.Generator().manual_seed(seed)
    prior = -1.1 * torch.log(torch.arange(1, c + 1, dtype=torch.float32))
    return prior + 2.0 * torch.randn(n, c, generator=g)


def test_temperature_defaults_to_the_students_of_the_label_family() -> None:
    from labelzip.lm.train import TrainLMConfig
    from labelzip.pipelines.train_student import StudentConfig

    assert AutoConfig().for_labels(lm=True).temperature == TrainLMConfig().temperature
    assert AutoConfig().for_labels(lm=False).temperature == StudentConfig().temperature
    assert AutoConfig(temperature=2.0).for_labels(lm=True).temperature == 2.0
    with pytest.raises(ValueError, match="for_labels"):
        _ = AutoConfig().student_temperature


def test_sampled_codecs_are_scored_on_the_mean_of_their_draws() -> None:
    """RS-KD draws at T = 1: at the LM student's T = 1 its mean label is the
    teacher (KL 0) and it wins; at T = 4 (its draws are not unbiased there) it
    is scored on one draw per label, far behind top-k."""
    rows = _lm_rows(600)
    target = Target(RateGoal(ratio=50), Layout(("sample",), (600,)), 2000, family="lm")
    config = AutoConfig(codecs=("topk", "rskd"), sample_labels=600)
    choice = choose_from_rows(rows, target, config)
    assert choice.config.temperature == 1.0
    rskd = next(r for r in choice.results if r.candidate.codec == "rskd")
    topk = next(r for r in choice.results if r.candidate.codec == "topk")
    assert rskd.mean_label and not topk.mean_label
    assert rskd.kl is not None and topk.kl is not None
    assert 0.0 <= rskd.kl < 1e-3 < topk.kl
    assert choice.winner.codec == "rskd"
    record = choice.to_dict(report=True)
    assert record["temperature"] == 1.0
    row = next(r for r in record["candidates"] if r["codec"] == "rskd")
    assert row["mean"] is True
    assert "mean" not in next(r for r in record["candidates"] if r["codec"] == "topk")
    assert any("rskd" in line and "(mean of draws)" in line for line in choice.table())
    # the student at T = 4: RS-KD's T = 1 draws are scored as drawn
    at4 = choose_from_rows(rows, target, config.model_copy(update={"temperature": 4.0}))
    rskd4 = next(r for r in at4.results if r.candidate.codec == "rskd")
    assert not rskd4.mean_label and at4.winner.codec == "topk"


def test_reuse_charge_grows_with_the_classes() -> None:
    """2/m at up to 10 classes (measured there), C/10 times that above: at 1000
    classes a pruned candidate that wins at 10 classes loses to every view."""
    from labelzip.selection.score import reuse_share, reuse_views

    assert reuse_views(None) == reuse_views(3) == reuse_views(10) == 2.0
    assert reuse_views(100) == 20.0 and reuse_views(1000) == 200.0
    assert reuse_share(150, num_classes=10) == pytest.approx(2 / 150)
    assert reuse_share(150, num_classes=1000) == 1.0
    assert reuse_share(400, num_classes=1000) == 0.5
    assert reuse_share(150, 0.1, num_classes=1000) == 0.1  # a fixed weight wins

    def pair(classes: int) -> list[CandidateResult]:
        every = CandidateResult(
            Candidate("vqae", {}, 1.0),
            total_bytes=1000,
            kl=0.3,
            top1=0.9,
            stored_top1=0.9,
            stored_top2=1.0,
            group_kl=torch.full((8,), 0.3),
            group_source_kl=torch.full((8,), 0.3),
            num_classes=classes,
        )
        quarter = CandidateResult(
            Candidate("vqae", {}, 0.25),
            total_bytes=1000,
            kl=1.5,
            top1=0.3,
            stored_top1=0.9,
            stored_top2=1.0,
            group_kl=torch.full((8,), 1.5),  # with the reused labels' mismatch
            group_source_kl=torch.full((8,), 0.13),  # the stored labels' error
            stored_views=75,
            num_classes=classes,
        )
        return [every, quarter]

    config = AutoConfig().for_labels(lm=False)
    assert pick_candidate(pair(10), config).keep_fraction == 0.25
    assert pick_candidate(pair(1000), config).keep_fraction == 1.0
    # the record says what was charged; records written before say 2
    choice = AutoChoice(
        winner=pair(1000)[0].candidate,
        results=tuple(pair(1000)),
        config=config,
        fit_labels=100,
        held_labels=40,
        reference_total=20_000,
        seconds=0.0,
        num_classes=1000,
    )
    record = choice.to_dict()
    assert record["reuse_views"] == 200.0
    # the whole mismatch, less the free codec error (the stored labels' is larger)
    assert record["candidates"][1]["score"] == pytest.approx(1.5 - FREE_ERROR)
    assert "reuse mismatch x 200/views stored" in format_table(record)[0]
    del record["reuse_views"]
    assert "reuse mismatch x 2/views stored" in format_table(record)[0]
    # with no candidate pruned (LM tokens) the header says the score is the KL
    unpruned = dataclasses.replace(choice, results=(pair(1000)[0],), num_classes=49_152)
    unpruned_record = unpruned.to_dict()
    header = format_table(unpruned_record)[0]
    assert "score = KL, no view pruned, codec error up to 0.0023 free, at T=4" in header
    assert "views stored" not in header
    del unpruned_record["free_error"]  # a record written before the credit
    assert "score = KL, no view pruned, at T=4" in format_table(unpruned_record)[0]
    # a record that keeps only the winner's row cannot say nothing was pruned
    winner_only = dataclasses.replace(choice, rows="winner").to_dict()
    assert winner_only["omitted"] == 1
    assert "x 200/views stored" in format_table(winner_only)[0]
