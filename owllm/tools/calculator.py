"""A safe arithmetic evaluator: an ``ast`` whitelist, never ``eval``/``exec``.

Accepted: int and float literals, ``+ - * / // % **``, unary ``+``/``-`` and parentheses.
Everything else (names, calls, attributes, subscripts, lambdas, comprehensions, strings,
complex numbers, bit operators, comparisons) is rejected before anything is computed.
Work is bounded: the expression's length and node count, the exponent, and the magnitude of
every intermediate result, so ``9**9**9`` is refused instead of eating the CPU.
Failures (including division by zero) raise :class:`CalculatorError`, a
:class:`~owllm.tools.errors.ToolError`, which the tool server answers with 422.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from owllm.tools.errors import ToolError

MAX_EXPRESSION_LENGTH = 512
MAX_NODES = 256
MAX_EXPONENT = 10_000
MAX_INT_DIGITS = 300  #: |int results| < 10**300
MAX_FLOAT = 1e300

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg,
}
_INT_LIMIT = 10 ** MAX_INT_DIGITS


class CalculatorError(ToolError):
    """The expression is not allowed, or its value cannot be computed within the limits."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="calculator_error",
                         hint="use numbers, + - * / // % **, unary +/- and parentheses")


def _check(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # complex from (-8) ** 0.5, for one
        raise CalculatorError(f"result is not a real number ({type(value).__name__})")
    if isinstance(value, int):
        if value <= -_INT_LIMIT or value >= _INT_LIMIT:
            raise CalculatorError(f"result has more than {MAX_INT_DIGITS} digits")
    elif not math.isfinite(value) or abs(value) > MAX_FLOAT:
        raise CalculatorError("result is too large (or not finite)")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is beyond ±{MAX_EXPONENT}")
    # digits of base**exponent ≈ exponent·log10|base|: refuse before computing it
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and exponent * math.log10(abs(base)) >= MAX_INT_DIGITS):
        raise CalculatorError(f"result has more than {MAX_INT_DIGITS} digits")
    result: Number = base ** exponent
    return result


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only int and float literals are allowed, not "
                                  f"{type(node.value).__name__}")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        try:
            if isinstance(node.op, ast.Pow):
                return _check(_power(left, right))
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result is too large") from None
    raise CalculatorError(f"{type(node).__name__} is not allowed in an expression")


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression; raises :class:`CalculatorError`."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalculatorError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    if not expression.strip():
        raise CalculatorError("expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        raise CalculatorError(f"not an arithmetic expression: {detail}") from None
    for count, node in enumerate(ast.walk(tree), 1):
        if count > MAX_NODES:
            raise CalculatorError(f"expression has more than {MAX_NODES} parts")
        if not isinstance(node, (ast.Expression, ast.Constant, ast.UnaryOp, ast.BinOp,
                                 ast.operator, ast.unaryop)):
            raise CalculatorError(f"{type(node).__name__} is not allowed in an expression")
        if isinstance(node, ast.operator) and type(node) not in _BINARY:
            raise CalculatorError(f"operator {type(node).__name__} is not allowed")
        if isinstance(node, ast.unaryop) and type(node) not in _UNARY:
            raise CalculatorError(f"operator {type(node).__name__} is not allowed")
    try:
        return _eval(tree)
    except RecursionError:
        raise CalculatorError("expression nests too deeply") from None


def calculator(expression: str) -> Number:
    """The ``calculator`` tool: the value of ``expression`` (int or float)."""
    return evaluate(expression)
