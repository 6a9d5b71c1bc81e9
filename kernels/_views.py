"""Array views that count no references, for loops whose threads share arrays.

Each view numba makes of an array (a slice, a row, a reshape) takes a reference on the
array's memory block and drops it when it dies: an atomic add on the block's counter,
through a call. The threads of a time loop slice the same arrays (states, gates, panels)
at every step, so that counter's cache line goes back and forth between their cores, a
hundred or more times a step; even a thread's own buffers pay an atomic add per view.
At batch 1 a step is about a microsecond and a half, and these ate ~10% of it.

``unmanaged(a)`` is a view of a with no memory block: NRT skips a view without one, so
nothing derived from it counts anything. The memory must outlive the view: a function's
array arguments live until it returns; for an array the function allocates itself, call
``keep_alive`` on that array at the end (numba frees an array after its last use)::

    buf = np.empty(n)
    v = unmanaged(buf)
    ...                  # every use goes through v
    keep_alive((buf,))

Never return or store an unmanaged view (or a view of one): boxed for Python it becomes
an array that owns nothing, pointing at memory that may be freed.
"""
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def unmanaged(typingctx, a):
    """a's data, shape and strides, without its memory block (NULL: never counted)."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        view = context.make_array(signature.return_type)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(view, field, getattr(src, field))
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return a(a), codegen


@intrinsic
def keep_alive(typingctx, arrays):
    """Does nothing; its argument (a tuple of arrays) lives up to this call."""
    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return types.none(arrays), codegen
