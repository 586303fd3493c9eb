"""Relation extraction as sentence classification with entity markers (R-BERT style).

Input: a TSV whose text column tags the two entities, SemEval-2010 task 8
style, and a label column with the relation:

  The <e1>child</e1> was carefully wrapped into the <e2>cradle</e2>.<TAB>Content-Container(e1,e2)

The tags become marker tokens the vocab already has ('$' around e1, '#'
around e2, as Wu & He 2019), so no embedding is added. Labels are those of
the training file, sorted, unless data.labels lists them.

  python -m train.main --config=configs/finetune/relation.py --workdir=/tmp/semeval \\
      --config.data.train_path=semeval/train.tsv --config.data.eval_path=semeval/dev.tsv
"""

from configs.finetune import common


def get_config(size: str = "base"):
  c = common.get_config("classification", size)
  c.data.update(
    text_columns="sentence",
    label_column="relation",
    has_header=True,
    entity_markers=("$", "$", "#", "#"),
    metrics=("accuracy",),
    max_seq_length=128,
  )
  c.batch_size = 32
  c.epochs = 3
  c.optimizer.lr = 2e-5
  c.early_stopping.update(metric="accuracy", mode="max")
  return c
