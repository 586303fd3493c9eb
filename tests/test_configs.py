"""Every config file builds, and its model section is a valid BertConfig."""

import glob
import importlib
import os

import pytest

from model.config import BertConfig
from train import optim
from train.run import schedule_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [
  ("bert_tiny", None),
  ("bert_mini", None),
  ("bert_small", None),
  ("bert_base", "phase1"),
  ("bert_base", "phase2"),
  ("bert_large", "phase1"),
  ("bert_large", "phase2"),
  ("bert_large_lamb", "phase1"),
  ("bert_large_lamb", "phase2"),
  ("chinese_mini", None),
  ("continued", None),
  ("scratch", None),
  ("scratch", "base,2.5G"),
]


def test_every_pretraining_config_file_is_covered():
  files = glob.glob(f"{REPO}/configs/pretrain/*.py")
  names = {os.path.basename(p)[:-3] for p in files} - {"__init__", "common"}
  assert names == {name for name, _ in CASES}


@pytest.mark.parametrize("name,arg", CASES)
def test_pretraining_config_builds(name, arg):
  module = importlib.import_module(f"configs.pretrain.{name}")
  config = module.get_config(arg) if arg else module.get_config()
  model = BertConfig.from_dict(config.model)
  assert config.data.max_seq_length <= model.max_position_embeddings
  assert config.batch_size % config.optimizer.grad_accum_steps == 0
  total, warmup = schedule_steps(config, None)  # a token budget becomes steps
  optimizer = config.optimizer.copy_and_resolve_references()
  optimizer.update(total_steps=total, warmup_steps=warmup)
  optim.make_schedule(optimizer)  # raises on a bad schedule


def test_the_scratch_recipe_sets_its_length_by_a_token_budget():
  from configs.pretrain import scratch

  config = scratch.get_config("tiny,10M")
  assert config.model.num_hidden_layers == 2 and config.optimizer.total_tokens == 10_000_000
  # 64 rows of 128 tokens a step: ceil(10M / 8192) steps, 6 % of them warmup.
  assert schedule_steps(config, None) == (1221, 73)
  config.batch_size = 1024  # a slice: the same budget in fewer, larger steps
  assert schedule_steps(config, None) == (77, 5)
  with pytest.raises(ValueError, match="scratch.py: token budget '10X'"):
    scratch.get_config("tiny,10X")


def test_paper_numbers_are_the_papers():
  from configs.pretrain import bert_base, bert_large

  base = bert_base.get_config("phase1")
  assert (base.model.num_hidden_layers, base.model.hidden_size, base.model.num_attention_heads) == (
    12,
    768,
    12,
  )
  assert (base.optimizer.lr, base.optimizer.warmup_steps, base.batch_size) == (1e-4, 10_000, 256)
  large = bert_large.get_config("phase2")
  assert (
    large.model.num_hidden_layers,
    large.model.hidden_size,
    large.model.intermediate_size,
  ) == (24, 1024, 4096)
  assert (large.data.max_seq_length, large.data.max_predictions) == (512, 80)
