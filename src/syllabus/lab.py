"""The lab task: seeded GSM8K-style word problems, and the rule-based lab teachers that solve them.

A problem is a short story about one holder's count of objects, changed step by step; each step
exercises one knowledge module (add, subtract, ...). The last step's module is the problem's
module, the number of steps its level. Everything is small and regular (a few names, objects and
templates, integer operands up to ``max_operand`` - a percent step's rate is one of ``PERCENTS`` -,
integer answers) so that tiny students trained
from scratch on a CPU learn it within minutes.

``metadata["steps"]`` keeps each computation in structured form, so trace writers can render the
same arithmetic in any style: ``write_trace`` is the lab teachers' pen.
"""

from __future__ import annotations

import random
from typing import Iterable, Mapping, Sequence

from .prompts import question_prompt, target_text
from .records import Problem

MODULES: tuple[str, ...] = ("add", "subtract", "multiply", "divide", "percent", "rate", "comparison")
PREREQUISITES: dict[str, tuple[str, ...]] = {
    "add": (),
    "subtract": (),
    "multiply": ("add",),
    "divide": ("multiply", "subtract"),
    "percent": ("multiply", "divide"),
    "rate": ("multiply", "divide"),
    "comparison": ("subtract",),
}
STYLES: tuple[str, ...] = ("equations", "prose", "selfcheck", "sloppy")
SLOPPY_MIN_ERROR_RATE = 0.4  # the sloppy teacher slips at least this often, whatever its error_rate

NAMES = ("Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jade")
OBJECTS = ("apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles", "cookies", "stickers")
PERCENTS = (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90)
MAX_VALUE_FACTOR = 10  # by default, intermediate values stay at or below max_operand * MAX_VALUE_FACTOR

# One sentence per step (2-3 wordings per module); {h} holder, {o} object, {a} {b} operands, {p} new holder.
STEP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": ("Then {h} gets {a} more {o}.", "A friend gives {h} {a} more {o}.", "{h} finds {a} more {o}."),
    "subtract": ("Then {h} gives away {a} {o}.", "{h} loses {a} {o}.", "{h} sells {a} of the {o}."),
    "multiply": ("Then {h} ends up with {a} times as many {o}.", "{h} buys more until there are {a} times as many {o}."),
    "divide": ("Then {h} shares the {o} equally among {a} friends and keeps one share.",
               "{h} puts the {o} into {a} equal boxes and keeps one box."),
    "percent": ("Then {h} keeps only {a} percent of the {o}.", "{h} gives away all but {a} percent of the {o}."),
    "rate": ("{h} made them in {a} hours. At that rate {h} makes a new batch in {b} hours, keeping only it.",
             "{h} made them in {a} days. At that speed {h} makes new ones for {b} days, keeping only those."),
    "comparison": ("{p} has {a} fewer {o} than {h}.", "{p} has {a} more {o} than {h}."),
}
QUESTIONS = ("How many {o} does {h} have now?", "How many {o} does {h} have at the end?")

# Gold solution sentences (GSM8K-like), one per step.
GOLD_TEMPLATES: dict[str, str] = {
    "add": "{h} has {v} {o} and gets {a} more, so {h} has {v} + {a} = {r} {o}.",
    "subtract": "{h} has {v} {o} and {a} leave, so {h} has {v} - {a} = {r} {o}.",
    "multiply": "{h} has {a} times as many {o} as the {v} before, so {v} * {a} = {r} {o}.",
    "divide": "{h} splits {v} {o} into {a} equal parts, so one part is {v} / {a} = {r} {o}.",
    "percent": "{h} keeps {a} percent of {v} {o}, so {h} has {v} * {a} / 100 = {r} {o}.",
    "rate": "{h} makes {v} / {a} = {u} {o} per unit of time, so in {b} units {h} makes {u} * {b} = {r} {o}.",
    "comparison-": "{p} has {a} fewer {o} than the {v} of {h}, so {p} has {v} - {a} = {r} {o}.",
    "comparison+": "{p} has {a} more {o} than the {v} of {h}, so {p} has {v} + {a} = {r} {o}.",
}


# --------------------------------------------------------------------------- the module graph
def topological_order(modules: Iterable[str] | None = None) -> list[str]:
    """Modules with every prerequisite before its dependants (ties in ``MODULES`` order)."""
    wanted = list(MODULES if modules is None else modules)
    _check_modules(wanted)
    done: list[str] = []
    while len(done) < len(wanted):
        ready = [m for m in wanted if m not in done and all(p in done or p not in wanted for p in PREREQUISITES[m])]
        done.append(min(ready, key=MODULES.index))
    return done


def ancestors(module: str, prerequisites: Mapping[str, Sequence[str]] = PREREQUISITES) -> set[str]:
    """Every module that ``module`` depends on, directly or not, in ``prerequisites`` (default: the lab's
    graph; IOA's Organizer passes the graph it was given)."""
    out: set[str] = set()
    stack = list(prerequisites.get(module, ()))
    while stack:
        m = stack.pop()
        if m not in out:
            out.add(m)
            stack.extend(prerequisites.get(m, ()))
    return out


def _check_modules(modules: Iterable[str]) -> None:
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        raise ValueError(f"unknown lab modules {unknown}; known: {list(MODULES)}")


# --------------------------------------------------------------------------- one step of arithmetic
def apply_step(step: dict, value: int) -> int | None:
    """The result of ``step``'s operation on ``value``; None when it is not a positive integer."""
    op, a, b = step["op"], step["a"], step.get("b")
    if op == "+":
        r = value + a
    elif op == "-":
        r = value - a
    elif op == "*":
        r = value * a
    elif op == "/":
        r = value // a if value % a == 0 else None
    elif op == "%":
        r = value * a // 100 if (value * a) % 100 == 0 else None
    elif op == "rate":
        r = (value // a) * b if value % a == 0 else None
    else:
        raise ValueError(f"unknown step op {op!r}")
    return r if r is not None and r >= 1 else None


def _draw_step(module: str, value: int, holder: str, rng: random.Random, max_operand: int,
               cap: int) -> dict | None:
    """Operands for one step of ``module`` on ``value`` (None when this value admits none); values stay <= ``cap``."""
    if module == "add":
        if cap - value < 1:
            return None
        return {"op": "+", "a": rng.randint(1, min(max_operand, cap - value))}
    if module == "subtract":
        return {"op": "-", "a": rng.randint(1, min(max_operand, value - 1))} if value >= 2 else None
    if module == "multiply":
        hi = min(max_operand, 5, cap // value)
        return {"op": "*", "a": rng.randint(2, hi)} if hi >= 2 else None
    if module == "divide":
        divisors = [d for d in range(2, min(max_operand, value) + 1) if value % d == 0 and d != value]
        return {"op": "/", "a": rng.choice(divisors)} if divisors else None
    if module == "percent":
        fits = [p for p in PERCENTS if (value * p) % 100 == 0]
        return {"op": "%", "a": rng.choice(fits)} if fits else None
    if module == "rate":
        times = [t for t in range(2, min(max_operand, 12) + 1) if value % t == 0 and t != value]
        if not times:
            return None
        t = rng.choice(times)
        others = [u for u in range(2, min(max_operand, 12) + 1) if u != t and (value // t) * u <= cap]
        return {"op": "rate", "a": t, "b": rng.choice(others)} if others else None
    if module == "comparison":
        other = rng.choice([n for n in NAMES if n != holder])
        if value >= 2 and rng.random() < 0.5:
            return {"op": "-", "a": rng.randint(1, min(max_operand, value - 1)), "holder_after": other}
        if cap - value < 1:
            return None
        return {"op": "+", "a": rng.randint(1, min(max_operand, cap - value)), "holder_after": other}
    raise ValueError(f"unknown lab module {module!r}")


def _step_support(main: str, allowed: list[str]) -> list[str]:
    """Modules that earlier steps may use: the main module's prerequisites and itself (within ``allowed``)."""
    return sorted((ancestors(main) | {main}) & set(allowed), key=MODULES.index) or [main]


# --------------------------------------------------------------------------- problems
def _draw_problem(rng: random.Random, modules: list[str], min_steps: int, max_steps: int,
                  max_operand: int, pid: str, cap: int, mains: list[str] | None = None) -> Problem:
    main = rng.choice(mains if mains else modules)
    n_steps = rng.randint(min_steps, max_steps)
    support = _step_support(main, modules)
    for _ in range(1000):
        holder, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        start = rng.randint(2, max_operand)
        value, steps, sentences = start, [], [f"{holder} has {start} {obj}."]
        for i in range(n_steps):
            # earlier steps: a random supported module, else any other that fits this value; last: the main one
            options = [main] if i == n_steps - 1 else [rng.choice(support)] + rng.sample(support, len(support))
            step, module = None, main
            for module in options:
                step = _draw_step(module, value, holder, rng, max_operand, cap)
                if step is not None:
                    break
            if step is None:
                break
            template = rng.randrange(len(STEP_TEMPLATES[module]))
            if module == "comparison":
                template = 0 if step["op"] == "-" else 1
            result = apply_step(step, value)
            after = step.pop("holder_after", holder)
            step.update(module=module, value=value, result=result, holder=holder, holder_after=after,
                        object=obj, template=template)
            steps.append(step)
            sentences.append(STEP_TEMPLATES[module][template].format(
                h=holder, o=obj, a=step["a"], b=step.get("b"), p=after))
            value, holder = result, after
        else:
            question = rng.choice(QUESTIONS).format(o=obj, h=holder)
            text = " ".join(sentences + [question])
            solution = "\n".join(gold_sentence(s) for s in steps) + f"\n#### {value}"
            return Problem(id=pid, task="lab", source="lab", text=text, answer=str(value), solution=solution,
                           module=main, level=n_steps,
                           metadata={"steps": steps, "start": start, "object": obj, "holder": steps[0]["holder"]})
    raise RuntimeError(f"could not draw a {n_steps}-step lab problem for module {main!r} in 1000 tries; "
                       "raise max_operand")


def gold_sentence(step: dict, result: int | None = None) -> str:
    """The gold solution's sentence for one step (``result`` overrides the true result)."""
    r = step["result"] if result is None else result
    key = step["module"]
    if key == "comparison":
        key += "-" if step["op"] == "-" else "+"
    u = step["value"] // step["a"] if step["op"] == "rate" else None
    return GOLD_TEMPLATES[key].format(h=step["holder"], p=step["holder_after"], o=step["object"], v=step["value"],
                                      a=step["a"], b=step.get("b"), r=r, u=u)


def generate_problems(n: int, seed: int, *, modules: Iterable[str] | None = None, min_steps: int = 1,
                      max_steps: int = 3, max_operand: int = 20, max_value: int | None = None,
                      id_prefix: str = "lab", exclude: Iterable[str] = (),
                      main_modules: Iterable[str] | None = None, up_to: bool = False) -> list[Problem]:
    """``n`` distinct lab problems (by text, and none of ``exclude``), the same for the same seed anywhere.

    A problem's main module (its last step, ``Problem.module``) is drawn from ``main_modules`` (default:
    ``modules``); its earlier steps from the main module's prerequisites and itself, within ``modules``.
    So ``main_modules=[k]`` gives module k's problems as they occur among ``modules``' (IOA's probe items).
    Operands are at most ``max_operand`` (a percent step's rate is one of ``PERCENTS``); every value along
    the way at most ``max_value`` (default ``max_operand * MAX_VALUE_FACTOR``). When the settings allow fewer
    than ``n`` distinct problems this raises, or with ``up_to`` returns the ones found (2,000 draws in a row
    without a new one end the search).
    """
    modules = list(MODULES if modules is None else modules)
    _check_modules(modules)
    if not modules:
        raise ValueError("generate_problems: 'modules' is empty; name at least one of " + ", ".join(MODULES))
    mains = None if main_modules is None else list(main_modules)
    if mains is not None:
        _check_modules(mains)
        outside = sorted(set(mains) - set(modules))
        if not mains or outside:
            raise ValueError(f"generate_problems: main_modules must be a non-empty subset of modules {modules}; "
                             f"got {mains}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"generate_problems: need 1 <= min_steps ({min_steps}) <= max_steps ({max_steps})")
    if max_operand < 2:
        raise ValueError(f"generate_problems: max_operand must be at least 2 (got {max_operand})")
    cap = max_value if max_value is not None else max_operand * MAX_VALUE_FACTOR
    if cap < max_operand:
        raise ValueError(f"generate_problems: max_value ({cap}) must be at least max_operand ({max_operand})")
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Problem] = []
    misses = 0
    while len(out) < n:
        problem = _draw_problem(rng, modules, min_steps, max_steps, max_operand, f"{id_prefix}-{len(out):05d}", cap,
                                mains)
        if problem.text in seen:
            misses += 1
            if misses > 2000:  # 2000 draws in a row without a new problem: the space is (nearly) used up
                if up_to:
                    return out
                raise RuntimeError(f"only {len(out)} distinct lab problems found for n={n}; widen the settings "
                                   "(more modules, steps or a larger max_operand)")
            continue
        seen.add(problem.text)
        out.append(problem)
        misses = 0
    return out


def draw_splits(sizes: dict[str, int], seed: int, **settings) -> dict[str, list[Problem]]:
    """Disjoint problem sets (no shared text), e.g. ``{"pool": 400, "probe": 60, "heldout": 100}``.

    Each split has its own seed stream and id prefix (``lab-<split>``); later splits exclude the
    texts of earlier ones, in the order given.
    """
    out: dict[str, list[Problem]] = {}
    taken: set[str] = set()
    for i, (name, size) in enumerate(sizes.items()):
        problems = generate_problems(size, seed * 1009 + i, id_prefix=f"lab-{name}", exclude=taken, **settings)
        taken.update(p.text for p in problems)
        out[name] = problems
    return out


WARMUP_STYLES: tuple[str, ...] = ("gold", "equations", "prose", "selfcheck")
# The teacher style closest to each warm-up style: the gold solutions are the prose teacher's sentences
# without the "Step i:" prefix and closing line. A student warm-started in a style is familiar with it.
FAMILIAR_STYLE: dict[str, str] = {"gold": "prose", "equations": "equations", "prose": "prose",
                                  "selfcheck": "selfcheck"}


def pretrain_corpus(n: int, seed: int, *, modules: Iterable[str] | None = None, min_steps: int = 1,
                    max_steps: int = 3, max_operand: int = 20, max_value: int | None = None,
                    exclude: Iterable[str] = (), style: str = "gold") -> list[str]:
    """Texts that warm-start lab students: prompt plus a correct solution, in the one prompt format.

    ``style`` is ``gold`` (the reference solution) or a lab teacher's style written without slips,
    so that students can be made familiar with one way of writing solutions (a planted preference).
    """
    if style not in WARMUP_STYLES:
        raise ValueError(f"unknown warm-up style {style!r}; choose one of {list(WARMUP_STYLES)}")
    problems = generate_problems(n, seed, modules=modules, min_steps=min_steps, max_steps=max_steps,
                                 max_operand=max_operand, max_value=max_value, id_prefix="lab-pretrain",
                                 exclude=exclude)
    if style == "gold":
        return [question_prompt(p.text) + target_text(p.solution) for p in problems]
    rng = random.Random(seed)
    return [question_prompt(p.text) + target_text(write_trace(p, style, error_rate=0.0, rng=rng)) for p in problems]


# --------------------------------------------------------------------------- the lab teachers
def step_equation(step: dict, value: int | None = None, result: int | None = None) -> str:
    """One step as an equation, e.g. ``3 - 1 = 2`` (``value``/``result`` override the step's own)."""
    value = step["value"] if value is None else value
    result = step["result"] if result is None else result
    if step["op"] == "rate":
        return f"{value} / {step['a']} * {step['b']} = {result}"
    if step["op"] == "%":
        return f"{value} * {step['a']} / 100 = {result}"
    return f"{value} {step['op']} {step['a']} = {result}"


def _check_line(step: dict, value: int, result: int) -> str:
    op, a = step["op"], step["a"]
    if op == "+":
        return f"Check: {result} - {a} = {value}, so this step is right."
    if op == "-":
        return f"Check: {result} + {a} = {value}, so this step is right."
    if op == "*":
        return f"Check: {result} / {a} = {value}, so this step is right."
    if op == "/":
        return f"Check: {result} * {a} = {value}, so this step is right."
    if op == "%":
        return f"Check: {result} is {a} out of every 100 of {value}, so this step is right."
    return f"Check: {result} / {step['b']} * {a} = {value}, so this step is right."


def _slipped_results(steps: list[dict], rng: random.Random) -> list[int]:
    """Step results with one arithmetic slip that carries through to a wrong final answer."""
    true = [s["result"] for s in steps]
    for _ in range(20):
        where = rng.randrange(len(steps))
        delta = rng.choice((-2, -1, 1, 2, 10))
        results, ok = list(true[:where]), True
        value = true[where] + delta
        if value < 1:
            continue
        results.append(value)
        for s in steps[where + 1:]:
            nxt = apply_step(s, value)
            if nxt is None:
                ok = False
                break
            results.append(nxt)
            value = nxt
        if ok and results[-1] != true[-1]:
            return results
    last = true[-1] + rng.choice((1, 2)) * (1 if true[-1] < 3 or rng.random() < 0.5 else -1)
    return true[:-1] + [last]


def slip_probability(style: str, error_rate: float) -> float:
    """How often a lab teacher's trace has a slip, i.e. a wrong final answer: ``error_rate``, at least
    ``SLOPPY_MIN_ERROR_RATE`` for ``sloppy``. What stage 2's verifier should find, planted."""
    return max(error_rate, SLOPPY_MIN_ERROR_RATE) if style == "sloppy" else error_rate


def write_trace(problem: Problem, style: str, *, error_rate: float, rng: random.Random) -> str:
    """A lab teacher's trace for ``problem`` in ``style``, ending ``#### N``.

    With probability ``error_rate`` (at least ``SLOPPY_MIN_ERROR_RATE`` for ``sloppy``) one step has an
    arithmetic slip that carries through to a wrong final answer. Styles: ``equations`` (terse
    equations), ``prose`` (step-by-step sentences), ``selfcheck`` (each step, then a check of it),
    ``sloppy`` (terse, no units, slips often).
    """
    if style not in STYLES:
        raise ValueError(f"unknown lab teacher style {style!r}; choose one of {list(STYLES)}")
    steps = problem.metadata.get("steps")
    if not steps:
        raise ValueError(f"problem {problem.id}: no metadata['steps']; lab teachers only write traces for lab problems")
    results = (_slipped_results(steps, rng) if rng.random() < slip_probability(style, error_rate)
               else [s["result"] for s in steps])
    values = [steps[0]["value"]] + results[:-1]
    lines: list[str] = []
    for i, (s, v, r) in enumerate(zip(steps, values, results), start=1):
        eq = step_equation(s, v, r)
        if style == "equations":
            lines.append(eq)
        elif style == "sloppy":
            lines.append(eq.replace(" ", ""))
        elif style == "prose":
            lines.append(f"Step {i}: {gold_sentence({**s, 'value': v}, r)}")
        else:  # selfcheck
            lines.append(f"Step {i}: {gold_sentence({**s, 'value': v}, r)}")
            lines.append(_check_line(s, v, r))
    if style == "prose":
        lines.append(rng.choice(PROSE_ENDINGS).format(r=results[-1]))
    elif style == "selfcheck":
        lines.append(rng.choice(SELFCHECK_ENDINGS).format(r=results[-1]))
    elif style == "equations" and rng.random() < 0.5:
        lines.append(f"Answer: {results[-1]}")
    return "\n".join(lines + [f"#### {results[-1]}"])


# Closing lines the lab teachers choose from, so that the M samples of one problem are not all identical.
PROSE_ENDINGS = ("So the answer is {r}.", "The answer is {r}.", "That gives {r} in the end.")
SELFCHECK_ENDINGS = ("All steps are checked, so the answer is {r}.", "Every step checks out, so the answer is {r}.",
                     "Both the work and the checks agree: the answer is {r}.")
