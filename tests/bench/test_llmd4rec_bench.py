"""The LLMD4Rec benches: the federated one pairs every arm with its seed's federated SASRec."""

from __future__ import annotations

import json
import math

import pytest

FEDERATED_TOML = """
[bench]
dataset = "synthetic"
seeds = [0, 1]
pretrain-rounds = 1

[defaults]
model = "llmd4rec"
algorithm = "fedavg"
num-nodes = 3
synthetic-users = 45
synthetic-items = 40
synthetic-interactions = 12
dim = 16
heads = 2
max-seq-len = 12
ks = "10"
device = "cpu"
llmd4rec-iterations = 1
llmd4rec-crm-epochs = 1
llmd4rec-positions = 1
llmd4rec-history = 4
llmd4rec-crm-lr = 0.005
llmd4rec-candidates = 10
llm-backend = "scripted"
llm-cache = false

[arms.continued]
llmd4rec-lambda-crm = 0.0
scripted-p = 0.0

[arms."scripted-p1.0"]
scripted-p = 1.0
"""


def _run(path, ndcg, base, crm_top1=None):
    it = {"coverage": 0.3, "teacher_top1": 0.5}
    if crm_top1 is not None:
        it["crm_top1"] = crm_top1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "metrics": {"ndcg@10": ndcg, "hr@10": 2 * ndcg}, "wall_s": 60.0, "iterations": [it],
        "baseline": {"metrics": {"ndcg@10": base, "hr@10": 2 * base}}}))


def test_summary_pairs_each_arm_with_its_seed_baseline_and_skips_a_missing_crm_top1(
        tmp_path, bench_script):
    llmd4rec = bench_script("llmd4rec")
    for seed, (a, b, base) in enumerate([(0.10, 0.11, 0.09), (0.12, 0.12, 0.10),
                                         (0.11, 0.13, 0.10)]):
        _run(tmp_path / "continued" / f"seed{seed}.json", a, base, crm_top1=0.25)
        _run(tmp_path / "teacher" / f"seed{seed}.json", b, base)
    rows = llmd4rec.summarize(tmp_path)
    assert rows["sasrec"]["ndcg@10"][0] == pytest.approx((0.09 + 0.10 + 0.10) / 3)
    gain = rows["teacher"]["gain/ndcg@10"]
    assert gain[0] == pytest.approx((0.02 + 0.02 + 0.03) / 3)
    assert gain[1] == pytest.approx(0.00577350, abs=1e-6)
    from scipy.stats import ttest_rel

    want = ttest_rel([0.11, 0.12, 0.13], [0.10, 0.12, 0.11]).pvalue
    assert rows["teacher"]["p_vs_continued/ndcg@10"] == pytest.approx(want)
    assert rows["continued"]["crm_top1"] == pytest.approx(0.25)
    assert math.isnan(rows["teacher"]["crm_top1"])
    assert "| teacher | 3 | 0.1200 ± 0.0100 |" in (tmp_path / "summary.md").read_text()


def test_summary_pairs_continued_only_over_seeds_with_the_same_pretrained_sasrec(
        tmp_path, bench_script):
    llmd4rec = bench_script("llmd4rec")
    for seed in range(3):  # `late` was pretrained again, and seed 2 came out different
        _run(tmp_path / "continued" / f"seed{seed}.json", 0.10 + seed / 100, 0.09)
        _run(tmp_path / "late" / f"seed{seed}.json", 0.12, 0.09 if seed < 2 else 0.08)
    rows = llmd4rec.summarize(tmp_path)
    from scipy.stats import ttest_rel

    want = ttest_rel([0.12, 0.12], [0.10, 0.11]).pvalue  # seeds 0 and 1 only
    assert rows["late"]["p_vs_continued/ndcg@10"] == pytest.approx(want)
    assert rows["late"]["sasrec/ndcg@10"][0] == pytest.approx((0.09 + 0.09 + 0.08) / 3)
    assert rows["sasrec"]["ndcg@10"][0] == pytest.approx(0.09)  # continued's CRMs


@pytest.mark.slow
def test_federated_bench_runs_baselines_then_arms_paired_by_seed(tmp_path, bench_script):
    fed = bench_script("llmd4rec_federated")
    conf_path = tmp_path / "bench.toml"
    conf_path.write_text(FEDERATED_TOML)
    conf = fed.load(conf_path)
    out, work = tmp_path / "out", tmp_path / "work"
    fed.run_baselines(conf, work, out)
    fed.run_arms(conf, work, out, ["continued", "scripted-p1.0"])
    for seed in (0, 1):
        base = json.loads((out / f"baseline-seed{seed}.json").read_text())
        assert base["rounds"] == 1 and base["config"]["llmd4rec-iterations"] == 0
        arm = json.loads((out / "scripted-p1.0" / f"seed{seed}.json").read_text())
        assert arm["rounds"] == 2 and arm["arm"] == "scripted-p1.0"
        assert arm["baseline"]["metrics"] == base["metrics"]
        assert arm["iterations"][0]["teacher_top1"] == pytest.approx(1.0)
    rows = fed.summarize(out)
    assert set(rows) == {"sasrec", "continued", "scripted-p1.0"}
    assert rows["sasrec"]["seeds"] == [0, 1]
    assert rows["scripted-p1.0"]["teacher_top1"] == pytest.approx(1.0)
    per_seed = fed.seed_table(out)
    cont = json.loads((out / "continued" / "seed1.json").read_text())["metrics"]["ndcg@10"]
    arm = json.loads((out / "scripted-p1.0" / "seed1.json").read_text())["metrics"]["ndcg@10"]
    assert f"| 1 | scripted-p1.0 | {arm:.4f} | {arm - cont:+.4f} | " in per_seed
    assert per_seed.count("| sasrec |") == 2
    curves = [json.loads((out / "scripted-p1.0" / f"seed{s}.json").read_text())
              ["valid_ndcg10_by_round"] for s in (0, 1)]
    assert [len(c) for c in curves] == [2, 2]  # one validation per round
    tail = fed.tail_table(out, 1)
    assert "| run | n | valid ndcg@10, round 1 | valid ndcg@10, round 2 |" in tail
    assert f"| scripted-p1.0 | 2 | {(curves[0][0] + curves[1][0]) / 2:.4f} | " \
           f"{(curves[0][1] + curves[1][1]) / 2:.4f} |" in tail
    assert "| sasrec | 2 | " in tail
    mtime = (out / "continued" / "seed0.json").stat().st_mtime_ns
    fed.run_arms(conf, work, out, ["continued"])  # finished cells are kept, not rerun
    assert (out / "continued" / "seed0.json").stat().st_mtime_ns == mtime
