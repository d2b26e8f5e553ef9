"""Progress output: plain lines every N steps off a terminal (no redraws), a bar on one."""

import io

from cfsnn_jax.training import progress


def test_line_progress_prints_every_n_steps_and_the_last():
  out = io.StringIO()
  bar = progress.LineProgress(total=7, initial=0, every=3, stream=out)
  for step in range(1, 8):  # the training loop: update, then set_postfix on log steps
    bar.update(step - bar.n)
    bar.set_postfix(loss=f"{1.0 / step:.3f}")
  bar.close()
  lines = out.getvalue().splitlines()
  assert [l.split(" (")[0] for l in lines] == ["train step 3/7 loss=0.333",
                                               "train step 6/7 loss=0.167",
                                               "train step 7/7 loss=0.143"]
  assert "\r" not in out.getvalue()


def test_no_terminal_means_no_tqdm(monkeypatch):
  class NotATty(io.StringIO):
    def isatty(self):
      return False
  monkeypatch.setattr("sys.stderr", NotATty())
  assert isinstance(progress.make_progress(10, 0, True, 5), progress.LineProgress)
  assert not isinstance(progress.make_progress(10, 0, False, 5), progress.LineProgress)


def test_eval_line():
  assert progress.eval_line(40, 880, {"accuracy": 0.5, "loss": 1.25, "firing_rate": 0.1}) == (
      "eval step 40/880 test_accuracy=0.5000 test_loss=1.2500 firing_rate=0.1000")
