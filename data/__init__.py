"""Input pipeline: everything between raw text and a per-host numpy batch.

tokenizer.py       load / train a WordPiece vocab, check it fits the model
corpus.py          documents from BERT text files, TFDS, or the stdlib docs
sentence_pairs.py  NSP pairs: chunking, random next, truncation, packing
masking.py         dynamic 80/10/10 masking, token or whole word
pretraining.py     build packed pairs; PretrainingData.batch(step), resumable
sampling.py        the epoch order of rows and each host's slice of a batch
finetune.py        shared fine-tuning pieces: line reading, labels, FinetuneData
classification.py  GLUE-style TSV / TFDS sentences and pairs, entity markers
ner.py             CoNLL files (IOB1 / BIO), first-sub-token labels, words back
squad.py           SQuAD JSON: windows with doc stride, offsets, answer spans
"""
