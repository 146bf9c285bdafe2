"""Math problems with worked solutions, generated from a seed: arithmetic word problems, algebra, fractions,
geometry, and symbolic calculus checked by sympy.

Problem `i` of a family is made by its own `random.Random(f"{family}:{i}")`, so any one problem is the same on
every machine and can be made without making the ones before it. The numbers are chosen so that every answer is
exact (integers or fractions) and every step shown is true.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

NAMES = ("Ana", "Ben", "Chen", "Dara", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena", "Mateo",
         "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe")  # fmt: skip
ITEMS = (("notebook", "notebooks"), ("apple", "apples"), ("ticket", "tickets"), ("pencil", "pencils"),
         ("book", "books"), ("mug", "mugs"), ("sandwich", "sandwiches"), ("plant", "plants"))  # fmt: skip


def _money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


def _frac(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def shopping(rng):
    name, (_, items) = rng.choice(NAMES), rng.choice(ITEMS)
    count, price, extra = rng.randint(2, 12), rng.randint(50, 900), rng.randint(100, 2000)
    total = count * price + extra
    paid = (total // 1000 + 1) * 1000 if rng.random() < 0.5 else None
    question = f"{name} buys {count} {items} at {_money(price)} each and a bag for {_money(extra)}."
    steps = [f"The {items} cost {count} x {_money(price)} = {_money(count * price)}.",
             f"Adding the bag: {_money(count * price)} + {_money(extra)} = {_money(total)}."]  # fmt: skip
    if paid is None:
        return question + f" How much does {name} spend?", steps, _money(total)
    steps.append(f"The change from {_money(paid)} is {_money(paid)} - {_money(total)} = {_money(paid - total)}.")
    return question + f" {name} pays with {_money(paid)}. How much change is given?", steps, _money(paid - total)


def discount(rng):
    price, percent = rng.randint(2, 60) * 5, rng.choice((10, 15, 20, 25, 30, 40, 50, 75))
    off = Fraction(price * percent, 100)
    question = f"A jacket costs ${price}. It is on sale for {percent}% off. What is the sale price?"
    steps = [f"{percent}% of ${price} is {price} x {percent}/100 = ${float(off):g}.",
             f"The sale price is ${price} - ${float(off):g} = ${float(price - off):g}."]  # fmt: skip
    return question, steps, f"${float(price - off):g}"


def speed(rng):
    name, speed_kmh, hours = (
        rng.choice(NAMES),
        rng.randint(4, 24) * 5,
        rng.choice((Fraction(1, 2), 1, Fraction(3, 2), 2, 3, 4)),
    )
    distance = speed_kmh * Fraction(hours)
    if rng.random() < 0.5:
        question = f"{name} drives at {speed_kmh} km/h for {float(hours):g} hours. How far does {name} travel?"
        steps = [f"Distance = speed x time = {speed_kmh} x {float(hours):g} = {float(distance):g} km."]
        return question, steps, f"{float(distance):g} km"
    question = f"A train covers {float(distance):g} km in {float(hours):g} hours. What is its average speed?"
    steps = [f"Speed = distance / time = {float(distance):g} / {float(hours):g} = {speed_kmh} km/h."]
    return question, steps, f"{speed_kmh} km/h"


def linear_equation(rng):
    x, a = rng.randint(-12, 15), rng.choice([n for n in range(-9, 10) if n not in (0, 1)])
    b = rng.choice([n for n in range(-30, 31) if n])
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    question = f"Solve for x: {a}x {sign} {abs(b)} = {c}."
    move = (
        f"Subtract {b} from both sides: {a}x = {c} - {b}" if b >= 0 else f"Add {-b} to both sides: {a}x = {c} + {-b}"
    )
    steps = [f"{move} = {c - b}.", f"Divide both sides by {a}: x = {c - b}/{a} = {x}."]
    return question, steps, f"x = {x}"


def fractions(rng):
    first = Fraction(rng.randint(1, 9), rng.randint(2, 12))
    second = Fraction(rng.randint(1, 9), rng.randint(2, 12))
    add = rng.random() < 0.6
    result = first + second if add else first - second
    common = first.denominator * second.denominator // math.gcd(first.denominator, second.denominator)
    op = "+" if add else "-"
    a, b = first * common, second * common
    question = f"Compute {_frac(first)} {op} {_frac(second)}."
    steps = [f"The least common denominator of {first.denominator} and {second.denominator} is {common}.",
             f"{_frac(first)} = {a.numerator}/{common} and {_frac(second)} = {b.numerator}/{common}.",
             f"{a.numerator}/{common} {op} {b.numerator}/{common} = {(a + b if add else a - b).numerator}/{common}."]  # fmt: skip
    if Fraction((a + b if add else a - b).numerator, common).denominator != common:
        steps.append(f"Simplified: {_frac(result)}.")
    return question, steps, _frac(result)


def rectangle(rng):
    width, length = rng.randint(2, 30), rng.randint(2, 40)
    if rng.random() < 0.5:
        question = f"A rectangular garden is {length} m long and {width} m wide. What is its area?"
        return (
            question,
            [f"Area = length x width = {length} x {width} = {length * width} square metres."],
            f"{length * width} m^2",
        )
    question = f"How much fencing is needed to go around a rectangle {length} m by {width} m?"
    steps = [f"Perimeter = 2 x (length + width) = 2 x ({length} + {width}) = {2 * (length + width)} m."]
    return question, steps, f"{2 * (length + width)} m"


def average(rng):
    name = rng.choice(NAMES)
    scores = [rng.randint(50, 100) for _ in range(rng.randint(3, 6))]
    total = sum(scores)
    mean = Fraction(total, len(scores))
    question = f"{name}'s test scores are {', '.join(map(str, scores))}. What is the mean score?"
    steps = [
        f"The sum is {' + '.join(map(str, scores))} = {total}.",
        f"The mean is {total} / {len(scores)} = {_frac(mean)}.",
    ]
    if mean.denominator != 1:
        steps[-1] = steps[-1][:-1] + f", about {float(mean):.2f}."
    return question, steps, _frac(mean)


def gcd_lcm(rng):
    a, b = rng.randint(4, 120), rng.randint(4, 120)
    g = math.gcd(a, b)
    if rng.random() < 0.5:
        return f"What is the greatest common divisor of {a} and {b}?", _euclid(a, b), str(g)
    lcm = a * b // g
    steps = _euclid(a, b) + [f"lcm({a}, {b}) = {a} x {b} / gcd = {a * b} / {g} = {lcm}."]
    return f"What is the least common multiple of {a} and {b}?", steps, str(lcm)


def _euclid(a: int, b: int) -> list[str]:
    steps, x, y = [], max(a, b), min(a, b)
    while y:
        steps.append(f"{x} = {x // y} x {y} + {x % y}.")
        x, y = y, x % y
    return steps + [f"So gcd({a}, {b}) = {x}."]


def linear_system(rng):
    x, y = rng.randint(-8, 10), rng.randint(-8, 10)
    a1, b1, a2, b2 = (rng.choice([n for n in range(-6, 7) if n]) for _ in range(4))
    while a1 * b2 - a2 * b1 == 0:
        b2 += 1 if b2 != -1 else 2
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y

    def coef(a, var):  # 1x -> x, -1y -> -y
        return f"{'-' if a < 0 else ''}{abs(a) if abs(a) != 1 else ''}{var}"

    def eq(a, b, c):
        return f"{coef(a, 'x')} {'+' if b >= 0 else '-'} {coef(abs(b), 'y')} = {c}"

    det = a1 * b2 - a2 * b1
    question = f"Solve the system: {eq(a1, b1, c1)} and {eq(a2, b2, c2)}."
    steps = [f"Multiply the first equation by {b2} and the second by {b1}, then subtract to remove y:",
             f"({a1 * b2} - ({a2 * b1}))x = {c1 * b2} - ({c2 * b1}), so {coef(det, 'x')} = {c1 * b2 - c2 * b1} and x = {x}.",
             f"Put x = {x} into the first equation: {coef(b1, 'y')} = {c1} - ({a1 * x}) = {c1 - a1 * x}, so y = {y}."]  # fmt: skip
    return question, steps, f"x = {x}, y = {y}"


def quadratic(rng):
    r, s = rng.randint(-9, 9), rng.randint(-9, 9)
    b, c = -(r + s), r * s

    def term(coef, var):
        return "" if coef == 0 else f" {'+' if coef > 0 else '-'} {'' if abs(coef) == 1 and var else abs(coef)}{var}"

    poly = f"x^2{term(b, 'x')}{term(c, '')}"
    question = f"Solve {poly} = 0."
    factors = "".join("x" if root == 0 else f"(x {'-' if root > 0 else '+'} {abs(root)})" for root in (r, s))
    factors = "x^2" if factors == "xx" else factors
    steps = [f"Look for two numbers with product {c} and sum {-b}: {r} and {s}.", f"So {poly} = {factors} = 0."]
    roots = sorted({r, s})
    answer = f"x = {roots[0]}" if len(roots) == 1 else f"x = {roots[0]} or x = {roots[1]}"
    return question, steps, answer


def percent_change(rng):
    old = rng.randint(2, 40) * 10
    percent = rng.choice((5, 10, 12, 20, 25, 40, 50, 60))
    up = rng.random() < 0.5
    new = old + old * percent // 100 if up else old - old * percent // 100
    if (old * percent) % 100:
        return discount(rng)
    word = "rose" if up else "fell"
    question = f"A town's population {word} from {old * 100} to {new * 100}. What is the percent change?"
    steps = [f"The change is {new * 100} - {old * 100} = {(new - old) * 100}.",
             f"As a percentage of the start: {(new - old) * 100} / {old * 100} x 100% = {'+' if up else '-'}{percent}%."]  # fmt: skip
    return question, steps, f"{'+' if up else '-'}{percent}%"


def order_of_operations(rng):
    a, b, c, d = (rng.randint(2, 12) for _ in range(4))
    shape = rng.choice(("a + b * c", "(a + b) * c", "a * b - c * d", "a * (b + c) - d"))
    expression = shape.replace("a", str(a)).replace("b", str(b)).replace("c", str(c)).replace("d", str(d))
    if shape == "a + b * c":
        steps = [f"Multiply first: {b} * {c} = {b * c}.", f"Then add: {a} + {b * c} = {a + b * c}."]
    elif shape == "(a + b) * c":
        steps = [f"Brackets first: {a} + {b} = {a + b}.", f"Then multiply: {a + b} * {c} = {(a + b) * c}."]
    elif shape == "a * b - c * d":
        steps = [
            f"{a} * {b} = {a * b} and {c} * {d} = {c * d}.",
            f"Then subtract: {a * b} - {c * d} = {a * b - c * d}.",
        ]
    else:
        steps = [
            f"Brackets first: {b} + {c} = {b + c}.",
            f"{a} * {b + c} = {a * (b + c)}, minus {d} is {a * (b + c) - d}.",
        ]
    return f"Evaluate {expression}.", steps, str(eval(expression))  # our own digits and operators


def arithmetic_sequence(rng):
    first, step, n = rng.randint(-10, 20), rng.randint(2, 9), rng.randint(5, 30)
    nth = first + (n - 1) * step
    if rng.random() < 0.5:
        question = f"An arithmetic sequence starts {first}, {first + step}, {first + 2 * step}, ... What is term {n}?"
        return question, [f"Term n = first + (n - 1) x difference = {first} + {n - 1} x {step} = {nth}."], str(nth)
    total = n * (first + nth) // 2
    question = f"What is the sum of the first {n} terms of {first}, {first + step}, {first + 2 * step}, ...?"
    steps = [
        f"Term {n} is {first} + {n - 1} x {step} = {nth}.",
        f"Sum = n x (first + last) / 2 = {n} x ({first} + {nth}) / 2 = {total}.",
    ]
    return question, steps, str(total)


def dice(rng):
    target = rng.randint(2, 12)
    ways = [(a, b) for a in range(1, 7) for b in range(1, 7) if a + b == target]
    p = Fraction(len(ways), 36)
    question = f"Two fair dice are rolled. What is the probability that the total is {target}?"
    steps = ["There are 6 x 6 = 36 equally likely outcomes.",
             f"The totals of {target} are {', '.join(f'({a},{b})' for a, b in ways)}: {len(ways)} outcomes.",
             f"The probability is {len(ways)}/36 = {_frac(p)}."]  # fmt: skip
    return question, steps, _frac(p)


WORD_FAMILIES = {
    f.__name__: f
    for f in (shopping, discount, speed, linear_equation, fractions, rectangle, average, gcd_lcm, linear_system,
              quadratic, percent_change, order_of_operations, arithmetic_sequence, dice)
}  # fmt: skip


def word_problem(family: str, index: int) -> tuple[str, list[str], str]:
    """(question, solution steps, final answer) of problem `index` of a family in `WORD_FAMILIES`."""
    return WORD_FAMILIES[family](random.Random(f"{family}:{index}"))


# ------------------------------------------------------------------------------------------------ sympy
SYMBOLIC_FAMILIES = ("derivative", "integral", "expand", "factor", "limit")


def symbolic_problem(family: str, index: int) -> tuple[str, list[str], str]:
    """A calculus or algebra exercise whose answer sympy computes; in plain text or LaTeX (chosen by the seed)."""
    import sympy

    rng = random.Random(f"{family}:{index}")
    x = sympy.Symbol("x")
    latex = rng.random() < 0.5

    def show(expr):
        return f"${sympy.latex(expr)}$" if latex else sympy.sstr(expr).replace("**", "^")

    def polynomial(degree):
        return sum(rng.randint(-7, 7) * x**k for k in range(degree + 1)) + x**degree

    if family == "derivative":
        pieces = [polynomial(rng.randint(2, 4)), rng.randint(1, 5) * sympy.sin(rng.randint(1, 4) * x),
                  rng.randint(1, 3) * sympy.exp(rng.randint(1, 3) * x), sympy.log(x) * rng.randint(1, 4)]  # fmt: skip
        f = sum(rng.sample(pieces, rng.randint(1, 3)))
        derivative = sympy.diff(f, x)
        return (
            f"Find the derivative of f(x) = {show(f)}.",
            [f"Differentiate term by term: f'(x) = {show(derivative)}."],
            show(derivative),
        )
    if family == "integral":
        f = polynomial(rng.randint(1, 4))
        antiderivative = sympy.integrate(f, x)
        if rng.random() < 0.5:
            lo, hi = sorted(rng.sample(range(-3, 5), 2))
            value = antiderivative.subs(x, hi) - antiderivative.subs(x, lo)
            steps = [f"An antiderivative is F(x) = {show(antiderivative)}.", f"F({hi}) - F({lo}) = {show(value)}."]
            return f"Compute the integral of {show(f)} from x = {lo} to x = {hi}.", steps, show(value)
        return (
            f"Find the indefinite integral of {show(f)} with respect to x.",
            [f"Integrate each power of x: {show(antiderivative)} + C."],
            f"{show(antiderivative)} + C",
        )
    if family == "expand":
        f = sympy.Mul(*[(x + rng.randint(-6, 6)) for _ in range(rng.randint(2, 3))], evaluate=False)
        expanded = sympy.expand(f)
        return (
            f"Expand {show(f)}.",
            [f"Multiply out the brackets and collect powers of x: {show(expanded)}."],
            show(expanded),
        )
    if family == "factor":
        roots = [rng.randint(-6, 6) for _ in range(rng.randint(2, 3))]
        f = sympy.expand(sympy.Mul(*[x - r for r in roots]))
        factored = sympy.factor(f)
        steps = [f"Its roots are {', '.join(map(str, sorted(set(roots))))}, so it factors as {show(factored)}."]
        return f"Factor {show(f)}.", steps, show(factored)
    if family == "limit":
        r = rng.randint(-5, 5)
        other = x + rng.randint(-5, 5)
        f = sympy.expand((x - r) * other) / (x - r)
        value = other.subs(x, r)
        steps = [f"The numerator is ({show(x - r)})({show(other)}); cancel the common factor {show(x - r)}.",
                 f"The limit is {show(other)} at x = {r}, which is {value}."]  # fmt: skip
        return f"Compute the limit of {show(f)} as x approaches {r}.", steps, str(value)
    raise ValueError(f"unknown symbolic family {family!r}; choose from {SYMBOLIC_FAMILIES}")


def render(question: str, steps: list[str], answer: str, doc_id: str, pick) -> tuple[str, int]:
    """One problem as text in one of a few layouts; returns (text, prompt_end) like `templates`."""
    layout = pick(doc_id, ("problem", "question", "chat"))
    solution = " ".join(steps)
    if layout == "problem":
        prompt = f"Problem: {question}\nSolution:"
        return f"{prompt} {solution}\nAnswer: {answer}", len(prompt)
    if layout == "question":
        prompt = f"Question: {question}\nAnswer:"
        return f"{prompt} {solution} The answer is {answer}.", len(prompt)
    prompt = f"User: {question}\nAssistant:"
    return f"{prompt} {solution}\nSo the answer is {answer}.", len(prompt)
