"""Configs compile for real TPU slices on this CPU machine, and fit their HBM."""

import pytest

pytest.importorskip("libtpu", reason="pip install -e '.[tpu]' for ahead-of-time TPU compiles")

import jax

from configs.pretrain import bert_base, bert_large
from model.config import BertConfig
from train import aot
from train.profiling import train_flops_per_step


@pytest.fixture(autouse=True, scope="module")
def fast_tpu_compiles():
  """The TPU compiler at its lowest execution-time effort (train.aot --effort=-1): bert-base
  compiles about 4x faster, its memory estimate 5 % higher (3.78 against 3.59 GiB a chip, see
  README), so "fits" stays a safe check. train.aot's default effort gives the real numbers."""
  before = jax.config.jax_exec_time_optimization_effort
  jax.config.update("jax_exec_time_optimization_effort", -1.0)
  yield
  jax.config.update("jax_exec_time_optimization_effort", before)


def test_flop_count_matches_the_6nd_rule_for_bert_base():
  model = BertConfig()
  flops = train_flops_per_step(model, batch=256, length=128, predictions=20)
  params_in_matmuls = 12 * (4 * 768**2 + 2 * 768 * 3072)
  six_n_d = 6 * params_in_matmuls * 256 * 128
  assert 1.0 < flops / six_n_d < 1.2  # attention and the MLM head add the rest


@pytest.mark.slow
def test_bert_base_compiles_for_v5e_4x4_and_fits():
  config = bert_base.get_config("phase1")
  config.model.scan_layers = True  # compile time flat in depth (unscanned: ~7 min on 2 cores)
  report = aot.compile_for_topology(config, "v5e:4x4")
  print(report.summary())
  assert report.num_devices == 16 and report.device_kind == "TPU v5 lite"
  assert report.fits and 0.5 * 2**30 < report.bytes_per_chip


@pytest.mark.slow
def test_bert_large_compiles_for_v4_and_fits():
  config = bert_large.get_config("phase1")  # scan + remat, fsdp=4 by default
  report = aot.compile_for_topology(config, "v4:2x2x1")
  print(report.summary())
  assert report.device_kind == "TPU v4"
  assert report.fits


@pytest.mark.slow
def test_a_config_too_big_for_the_chip_is_reported():
  config = bert_large.get_config("phase2")
  config.batch_size = 4096
  config.model.remat_policy = "none"
  config.mesh.shape = dict(data=-1, fsdp=1, tensor=1)
  report = aot.compile_for_topology(config, "v5e:2x2")
  assert not report.fits and "DOES NOT FIT" in report.summary()


@pytest.mark.slow
def test_fine_tuning_lora_and_continual_configs_compile_for_v5e_4x4():
  """Every kind of config goes through train.run.build_run(abstract=True): no data is read."""
  from configs import sizes
  from configs.continual import sst2_conll
  from configs.finetune import sst2

  # bert-tiny keeps four TPU compiles near a minute on 2 cores; the configs are the real ones.
  full = sst2.get_config("tiny")
  lora = sst2.get_config("tiny")
  lora.peft.method = "lora"
  reports = {
    "full": aot.compile_for_topology(full, "v5e:4x4"),
    "lora": aot.compile_for_topology(lora, "v5e:4x4"),
  }
  continual = sst2_conll.get_config("/data")
  for stage in continual.stages.values():
    stage.model = sizes.bert("tiny")
  stages = aot.compiled_configs(continual)
  assert [name for name, _ in stages] == ["sst2", "conll2003"]
  assert stages[1][1].ewc.weight > 0 and stages[0][1].ewc.weight == 0
  for name, stage in stages:
    reports[name] = aot.compile_for_topology(stage, "v5e:4x4")
  for report in reports.values():
    print(report.summary())
    assert report.fits and report.num_devices == 16 and report.bytes_per_chip > 0
  # LoRA keeps Adam moments for its branches only; EWC adds an anchor and a Fisher.
  assert reports["lora"].bytes_per_chip < reports["full"].bytes_per_chip
  assert reports["conll2003"].bytes_per_chip > reports["sst2"].bytes_per_chip
