"""Ops HTP has no kernel for (QNN EP 2.7.0 refuses them, measured), and how each can be rewritten into ops it has.

`REWRITTEN` are the exact rewrites the qnn-legalize stage applies to the float graph; the others are
suggestions a refused node's error message carries.
"""

LEGALIZATIONS = {
    "Softsign": "x / (1 + |x|) with Abs, Add, Div",
    "Sinh": "(exp(x) - exp(-x)) / 2 with Exp, Neg, Sub, Mul",
    "Cosh": "(exp(x) + exp(-x)) / 2 with Exp, Neg, Add, Mul",
    "Acos": "pi / 2 - Asin(x)",
    "Acosh": "log(x + sqrt(x * x - 1))",
    "Celu": "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))",
    "Erf": "no exact rewrite: GELU as x * sigmoid(1.702 x) or the tanh form (changes the model; retrain or check its accuracy)",
}
REWRITTEN = ("Softsign", "Sinh", "Cosh", "Acos")
