"""The search-space DSL: declarations (``SearchSpace``, ``Stack``, ``Sequential``, ``OpSet``),
the op registry and built-in ops (``ops``), derived architectures (``Architecture``) and the
user's own code (``plugins``). Imports only the base."""
