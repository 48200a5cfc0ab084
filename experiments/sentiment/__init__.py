"""IMDB sentiment experiment: data readers (:mod:`.data`), the archive download (:mod:`.download`)
and the text pipeline (:mod:`.text`: cleaning, NLTK tokenization, vocabulary, bucketed batches).

Nothing is imported here so that ``python -m experiments.sentiment.download`` stays light.
"""
