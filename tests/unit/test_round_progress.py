"""The streamed round's one progress line, fed by three stages on their own threads."""

import io
import threading

from mmc_ray.orchestration.progress import RoundProgress


def test_three_stages_report_on_one_line_from_their_threads(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    progress = RoundProgress(trees=40, train_steps=5)
    searching = [threading.Thread(target=lambda: [progress.update(1) for _ in range(10)]) for _ in range(4)]
    annotating = threading.Thread(target=lambda: [progress.outcomes(3, 1) for _ in range(50)])
    for t in [*searching, annotating]:
        t.start()
    for step in range(1, 6):
        progress.train_step({"step": step, "loss": 1.0 / step})
    for t in [*searching, annotating]:
        t.join()
    progress.set_postfix(exp_per_s="2.5", refresh=False)
    assert progress.fields == {"critiques": 150, "drops": 50, "step": "5/5", "loss": "0.200", "exp_per_s": "2.5"}
    progress.close()
    last = err.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "40/40" in last and "critiques=150" in last and "step=5/5" in last
