"""Write the synthetic math fixtures in this folder (see README.md). Deterministic; run from anywhere:

    python data/math-fixtures/make_fixtures.py

Every file has the column names, types and folder layout of the hub dataset it stands in for; the
problems are made up here (none is copied from a real dataset).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from datasets import Dataset, Features, List, Value

HERE = Path(__file__).resolve().parent
PREFIX = ("Solve the following math problem step by step. The last line of your response should be of "
          "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

# (problem, answer) -- DAPO answers are integers; two rows exercise a fraction and a negative number
DAPO_EN = [
    ("What is the sum of the first 20 positive odd integers?", "400"),
    ("How many positive divisors does $360$ have?", "24"),
    ("Find the remainder when $2^{100}$ is divided by $7$.", "2"),
    ("Let $f(x) = 3x - 7$. Find $f(f(2))$.", "-4"),
    ("A fair coin is tossed twice. The probability of two heads is $\\frac{m}{n}$ in lowest terms. Find $m+n$.", "5"),
    ("Compute $\\binom{10}{3}$.", "120"),
    ("What is the least common multiple of $12$, $18$ and $30$?", "180"),
    ("Evaluate $1 - \\frac{1}{4}$ and write it as a fraction.", "\\frac{3}{4}"),
]
DAPO_CN = [
    ("求 $1+2+\\cdots+100$ 的值。", "5050"),
    ("一个正方形的周长是 $36$，求它的面积。", "81"),
    ("求方程 $x^2-5x+6=0$ 的两根之积。", "6"),
]
INDEX = lambda text: str(uuid.uuid5(uuid.NAMESPACE_URL, "spo_lab-fixture:" + text))  # noqa: E731

CHAT = List({"content": Value("string"), "role": Value("string")})
REWARD = {"ground_truth": Value("string"), "style": Value("string")}
EXTRA = {"index": Value("string")}
RAW_FEATURES = Features({"data_source": Value("string"), "prompt": CHAT, "ability": Value("string"),
                         "reward_model": REWARD, "extra_info": EXTRA})
PROCESSED_FEATURES = Features({"prompt": Value("string"), "solution": Value("string"), "data_source": Value("string"),
                               "source_prompt": CHAT, "ability": Value("string"), "reward_model": REWARD,
                               "extra_info": EXTRA})


def raw_row(problem: str, answer: str, copy: int = 0) -> dict:
    return {"data_source": "math_dapo", "prompt": [{"content": PREFIX + problem + SUFFIX, "role": "user"}],
            "ability": "MATH", "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": INDEX(f"{problem}#{copy}")}}


def processed_row(problem: str, answer: str) -> dict:
    r = raw_row(problem, answer)
    return {"prompt": r["prompt"][0]["content"], "solution": answer, "data_source": r["data_source"],
            "source_prompt": r["prompt"], "ability": r["ability"], "reward_model": r["reward_model"],
            "extra_info": r["extra_info"]}


def write(rows: list[dict], features: Features, path: str) -> None:
    out = HERE / path
    out.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=features).to_parquet(str(out))


def main() -> None:
    # open-r1/DAPO-Math-17k-Processed: one folder per config, already deduplicated by prompt
    for config, items in (("en", DAPO_EN), ("cn", DAPO_CN), ("all", DAPO_EN + DAPO_CN)):
        write([processed_row(p, a) for p, a in items], PROCESSED_FEATURES,
              f"DAPO-Math-17k-Processed/{config}/train-00000-of-00001.parquet")
    # BytedTsinghua-SIA/DAPO-Math-17k: the raw set repeats its problems; here 10 rows, 6 unique
    # (problem 0 three times, problems 1 and 2 twice: 4 repeats to drop; each copy has its own index)
    order = [0, 1, 0, 2, 3, 1, 4, 0, 5, 2]
    write([raw_row(*DAPO_EN[i], copy=k) for k, i in enumerate(order)], RAW_FEATURES, "DAPO-Math-17k/data/dapo-math-17k.parquet")

    # Maxwell-Jia/AIME_2024: ID / Problem / Solution / Answer (int64), one parquet file, split train
    aime24 = [("2024-I-1", "Find the number of ordered pairs $(a,b)$ of positive integers with $a+b=10$.", 9),
              ("2024-I-2", "Find the largest prime factor of $1001$.", 13),
              ("2024-I-3", "How many integers between $1$ and $100$ inclusive are multiples of $3$ or $5$?", 47),
              ("2024-II-1", "Find $7^2 + 24^2$, the square of the hypotenuse of a right triangle with legs $7$ and $24$.", 625),
              ("2024-II-2", "Find the number of subsets of $\\{1,2,\\dots,8\\}$ with exactly three elements.", 56),
              ("2024-II-3", "Find the remainder when $3^{20}$ is divided by $1000$.", 401)]
    write([{"ID": i, "Problem": p, "Solution": f"A short synthetic solution. The answer is $\\boxed{{{a}}}$.", "Answer": a}
           for i, p, a in aime24],
          Features({"ID": Value("string"), "Problem": Value("string"), "Solution": Value("string"), "Answer": Value("int64")}),
          "AIME_2024/aime_2024_problems.parquet")
    # yentinglin/aime_2025 (split train): id / problem / answer
    aime25 = [("Find the sum of all positive integers $n < 20$ that are prime.", "77"),
              ("Find the number of trailing zeros of $100!$.", "24"),
              ("Find $\\sqrt{2025}$.", "45"),
              ("Find the sum of the digits of $2^{10}$.", "7"),
              ("Find the number of diagonals of a convex $12$-gon.", "54"),
              ("Find the product of the roots of $x^2 - 13x + 40 = 0$.", "40")]
    write([{"id": i, "problem": p, "answer": a} for i, (p, a) in enumerate(aime25)],
          Features({"id": Value("int64"), "problem": Value("string"), "answer": Value("string")}),
          "aime_2025/data/train-00000-of-00001.parquet")
    # ByteDance-Seed/BeyondAIME (split test): problem / answer
    beyond = [("Find the number of positive integers $n \\le 1000$ such that $n^2 + 1$ is divisible by $5$.", "400"),
              ("Find the smallest positive integer with exactly $12$ positive divisors.", "60"),
              ("Find the number of lattice points $(x,y)$ with $x^2 + y^2 \\le 4$.", "13"),
              ("Find the sum of all divisors of $496$ that are less than $496$.", "496"),
              ("Find the value of $\\sum_{k=1}^{10} k^3$.", "3025"),
              ("Find $\\phi(1000)$, where $\\phi$ is Euler's totient function.", "400")]
    write([{"problem": p, "answer": a} for p, a in beyond],
          Features({"problem": Value("string"), "answer": Value("string")}), "BeyondAIME/data/test-00000-of-00001.parquet")
    # MathArena/brumo_2025 and MathArena/hmmt_feb_2025 (split train): problem_idx / problem / answer / problem_type
    arena = Features({"problem_idx": Value("int64"), "problem": Value("string"), "answer": Value("string"),
                      "problem_type": List(Value("string"))})
    brumo = [("What is the probability that a fair die shows a prime number?", "\\frac{1}{2}", ["Combinatorics"]),
             ("Find the area of an equilateral triangle with side length $2$.", "\\sqrt{3}", ["Geometry"]),
             ("Find the positive real $x$ with $x^2 = 12$.", "2\\sqrt{3}", ["Algebra"]),
             ("Find $\\frac{1}{2} + \\frac{1}{3}$.", "\\frac{5}{6}", ["Algebra"]),
             ("How many ways can $4$ people stand in a line?", "24", ["Combinatorics"]),
             ("Find the remainder when $10^{10}$ is divided by $9$.", "1", ["Number Theory"])]
    write([{"problem_idx": i + 1, "problem": p, "answer": a, "problem_type": t} for i, (p, a, t) in enumerate(brumo)],
          arena, "brumo_2025/data/train-00000-of-00001.parquet")
    hmmt = [("Find the positive root of $x^2 - x - 1 = 0$.", "\\frac{1+\\sqrt{5}}{2}", ["Algebra"]),
            ("Find the area of a circle of radius $2\\sqrt{5}$.", "20\\pi", ["Geometry"]),
            ("Find $\\log_2 1024$.", "10", ["Algebra"]),
            ("Simplify $\\frac{x^2 - 1}{x - 1}$ for $x \\ne 1$.", "x+1", ["Algebra"]),
            ("Find the number of positive divisors of $2^5 3^2$.", "18", ["Number Theory"]),
            ("Find the probability that two fair dice sum to $7$.", "\\frac{1}{6}", ["Combinatorics"])]
    write([{"problem_idx": i + 1, "problem": p, "answer": a, "problem_type": t} for i, (p, a, t) in enumerate(hmmt)],
          arena, "hmmt_feb_2025/data/train-00000-of-00001.parquet")


if __name__ == "__main__":
    main()
