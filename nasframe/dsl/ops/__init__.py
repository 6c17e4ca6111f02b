"""Operation registry and the built-in ops (importing this package registers them)."""
from nasframe.dsl.ops import attention, basic, conv, ffn  # noqa: F401,E402  (registration)
from nasframe.dsl.ops.base import (  # noqa: F401
    Context,
    IncrementalState,
    Operation,
    Residual,
    available_ops,
    check_op_params,
    create_op,
    op_factory,
    register_op,
    zeros_at_padding,
)
from nasframe.dsl.ops.dropout import Dropout, dropout  # noqa: F401
