"""The leaderboard config covers every registered method once, and its cells include the paper grid's."""

import inspect

from configs import leaderboard, resnet_cpu, vgg16_cpu
from saliency_jax.attribution import registry


def test_every_registered_method_is_on_the_leaderboard_once():
  names = [registry.parse(m).name for m in leaderboard.METHODS]
  # The package's own methods (other tests register methods of their own in this process).
  package = {n for n, fn in registry.METHODS.items() if inspect.unwrap(fn).__module__.startswith("saliency_jax.")}
  assert len(package) >= 20
  missing = package - set(names) - set(leaderboard.ALIASES)
  assert not missing, f"add {sorted(missing)} to configs/leaderboard.py METHODS (or ALIASES if it is another name)"
  labels = [registry.parse(m).label for m in leaderboard.METHODS]
  assert len(labels) == len(set(labels))
  for alias, entry in leaderboard.ALIASES.items():
    assert alias in registry.METHODS and entry in names


def test_leaderboard_grid_shares_the_paper_grids_cells():
  """Same method specs, images and jitter as the CPU configs' default grid, so those cells are read back."""
  for base in (resnet_cpu, vgg16_cpu):
    paper = base.get_config().single_pixel
    board = leaderboard.get_config(base.__name__.split(".")[-1]).single_pixel
    assert set(paper.methods) <= set(board.methods)
    assert board.max_images == paper.max_images and tuple(board.test_jitter[0]) in map(tuple, paper.test_jitter)
    assert set(board.targets) <= set(paper.targets) and set(board.outputs) == set(paper.outputs)
