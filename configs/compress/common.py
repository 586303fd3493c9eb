"""What every compression config starts from: the task's all-MiniLM-L6-v2 fine-tuning config."""

from configs.finetune import conll2003, sst2

TASKS = {"sst2": sst2.get_config, "conll2003": conll2003.get_config}


def task_config(task: str, where: str):
  """configs/finetune/<task>.py:minilm; `where` names the config file in the error."""
  if task not in TASKS:
    raise ValueError(f"{where}:{task}: one of {sorted(TASKS)}")
  return TASKS[task]("minilm")
