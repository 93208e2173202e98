"""The embedded `countdown` task: reach a target with + - * / using each given number once.

A problem like ``3,7,25->46:`` asks for an expression such as ``25+3*7``. Problems are
built by combining the drawn numbers at random, so each has at least one solution; which
split a problem belongs to is decided by a hash of its numbers and target (as in
`arithmetic`), so train and test never share one.

Completions are scored by parsing the expression with `ast` and walking a whitelist of
nodes (integer literals and the four binary operators) with exact `Fraction` arithmetic:
nothing the model writes is ever passed to `eval`.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from tic_grpo_cli.data.arithmetic import split_of

OPERATORS = ("+", "-", "*", "/")
# Far longer than any sensible answer; bounds the parser's work on runaway completions.
MAX_EXPRESSION_CHARS = 200
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() ]+")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class CountdownProblem:
    numbers: tuple[int, ...]
    target: int
    solution: str  # one expression that reaches the target

    @property
    def question(self) -> str:
        return f"{','.join(map(str, self.numbers))}->{self.target}:"

    @property
    def key(self) -> str:
        """Order-free identity: the same numbers and target are the same problem."""
        return f"{sorted(self.numbers)}->{self.target}"


def _combine(a: Fraction, b: Fraction, op: str) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _draw(rng: random.Random, num_numbers: int, max_number: int, operators: tuple[str, ...]):
    """Random numbers and a random full expression tree over all of them, or None."""
    numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
    pool = [(n, str(n)) for n in numbers]
    while len(pool) > 1:
        a, ea = pool.pop(rng.randrange(len(pool)))
        b, eb = pool.pop(rng.randrange(len(pool)))
        # Intermediates stay positive integers, as in the game: only the operators that
        # keep them so are drawn from.
        ops = [
            op
            for op in operators
            if op in "+*" or (op == "-" and a > b) or (op == "/" and a % b == 0)
        ]
        if not ops:
            return None
        op = rng.choice(ops)
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        pool.append((value, f"({ea}{op}{eb})"))
    value, expression = pool[0]
    # The last combination's parentheses wrap the whole expression.
    return numbers, value, expression[1:-1]


def generate(
    split: str,
    size: int,
    *,
    seed: int = 0,
    num_numbers: int = 3,
    max_number: int = 25,
    max_target: int = 100,
    operators: tuple[str, ...] = OPERATORS,
    test_percent: int = 10,
) -> list[CountdownProblem]:
    """``size`` distinct solvable problems of ``split``, deterministic in ``seed``.

    Raises ValueError when the draws stop yielding new problems (too small a space).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unknown = [op for op in operators if op not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown operator(s) {unknown}; allowed: {list(OPERATORS)}")
    rng = random.Random(f"{seed}:countdown:{split}")
    seen: set[str] = set()
    problems: list[CountdownProblem] = []
    budget = 200 * size + 10_000
    for _ in range(budget):
        if len(problems) == size:
            return problems
        drawn = _draw(rng, num_numbers, max_number, tuple(operators))
        if drawn is None or not 1 <= drawn[1] <= max_target:
            continue
        problem = CountdownProblem(tuple(drawn[0]), drawn[1], drawn[2])
        if problem.key in seen or split_of(problem.key, test_percent) != split:
            continue
        seen.add(problem.key)
        problems.append(problem)
    if len(problems) == size:
        return problems
    raise ValueError(
        f"only {len(problems)} distinct {split} problems found, {size} requested; lower the "
        f"size or raise num_numbers/max_number/max_target"
    )


def extract_expression(completion: str) -> str | None:
    """The expression a completion answers with: inside the last <answer> tag if any (None
    when that tag is unfinished), else its first non-empty line; a trailing ``=46`` is
    dropped."""
    opened = completion.rfind("<answer>")
    if opened >= 0 and "</answer>" not in completion[opened:]:
        return None  # an unfinished last tag is no answer, as an unfinished last box
    tags = _ANSWER_TAG.findall(completion)
    text = tags[-1] if tags else next((ln for ln in completion.splitlines() if ln.strip()), "")
    text = text.split("=")[0].strip()
    return text or None


def evaluate(expression: str) -> tuple[Fraction, list[int]] | None:
    """(value, integer literals used), or None when the text is not a valid expression of
    integers and + - * / (this includes division by zero and unary minus)."""
    if len(expression) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(expression):
        return None
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return None
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if left is None or right is None:
                return None
            return _combine(left, right, _BINOPS[type(node.op)])
        return None  # anything else: names, calls, unary minus, powers, floor division

    value = walk(tree.body)
    return None if value is None else (value, literals)


def score(completion: str, numbers: list[int], target: int) -> tuple[bool, str | None]:
    """(correct, expression): correct iff the expression evaluates exactly to ``target``
    using each given number at most once (as many times as it is given)."""
    expression = extract_expression(completion)
    if expression is None:
        return False, None
    result = evaluate(expression)
    if result is None:
        return False, expression
    value, used = result
    reuses = Counter(used) - Counter(int(n) for n in numbers)
    return (not reuses and value == target), expression
