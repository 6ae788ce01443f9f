"""Chat templates: the small subset of Jinja that instruct models' templates (SmolLM2's among them)
use, interpreted without jinja2.

Supported: text; `{{ expr }}`; `{% for x in expr %}…{% endfor %}` (with `loop.first`, `loop.last`,
`loop.index`, `loop.index0`); `{% if %}…{% elif %}…{% else %}…{% endif %}`; `{%- … -%}` / `{{- … -}}`
whitespace trimming. Expressions: string literals ('…' or "…", with \\n \\t \\' \\" \\\\ escapes),
integers, true/false/none, names, `a.b`, `a['k']`, `a[0]`, `+` (string concatenation or addition),
`==`, `!=`, `and`, `or`, `not`, parentheses. Anything else (filters, `set`, macros, calls, …) raises
`ChatTemplateError` naming the construct and its offset in the template.

    render_chat(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
"""
import re

__all__ = ["ChatTemplate", "ChatTemplateError", "render_chat"]


class ChatTemplateError(ValueError):
    """A template construct outside the supported subset, a syntax error, or a render-time error."""


_TAG = re.compile(r"({{-?|{%-?|{#)(.*?)(-?}}|-?%}|#})", re.S)
_TOKEN = re.compile(r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<num>\d+)|(?P<name>[A-Za-z_]\w*)
                        |(?P<op>==|!=|[-+.\[\]()~|,:<>*/%]))""", re.X | re.S)
_ESCAPES = {"n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\", "r": "\r"}


def _unescape(body, where):
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                raise ChatTemplateError(f"unsupported escape {body[i:i + 2]!r} in a string at offset {where}")
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _Expr:
    """Recursive-descent parser of one expression into nested tuples."""

    def __init__(self, text, where):
        self.where, self.tokens, pos = where, [], 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ChatTemplateError(f"cannot parse {text[pos:pos + 20]!r} at offset {where}")
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self, value=None):
        kind, tok = self.peek()
        if kind is None or (value is not None and tok != value):
            raise ChatTemplateError(f"expected {value or 'an expression'!r} at offset {self.where}, got {tok!r}")
        self.i += 1
        return kind, tok

    def parse(self):
        node = self.or_()
        if self.i != len(self.tokens):
            tok = self.tokens[self.i][1]
            raise ChatTemplateError(f"unsupported construct {tok!r} (filters, calls, tests, … are not "
                                    f"supported) at offset {self.where}")
        return node

    def or_(self):
        node = self.and_()
        while self.peek() == ("name", "or"):
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self):
        node = self.not_()
        while self.peek() == ("name", "and"):
            self.take()
            node = ("and", node, self.not_())
        return node

    def not_(self):
        if self.peek() == ("name", "not"):
            self.take()
            return ("not", self.not_())
        return self.compare()

    def compare(self):
        node = self.add()
        if self.peek()[1] in ("==", "!="):
            op = self.take()[1]
            node = (op, node, self.add())
        return node

    def add(self):
        node = self.postfix()
        while self.peek() == ("op", "+"):
            self.take()
            node = ("+", node, self.postfix())
        return node

    def postfix(self):
        node = self.atom()
        while True:
            kind, tok = self.peek()
            if tok == "." and kind == "op":
                self.take()
                node = ("item", node, ("const", self.take_name()))
            elif tok == "[" and kind == "op":
                self.take()
                node = ("item", node, self.or_())
                self.take("]")
            else:
                return node

    def take_name(self):
        kind, tok = self.take()
        if kind != "name":
            raise ChatTemplateError(f"expected an attribute name at offset {self.where}, got {tok!r}")
        return tok

    def atom(self):
        kind, tok = self.take()
        if kind == "str":
            return ("const", _unescape(tok[1:-1], self.where))
        if kind == "num":
            return ("const", int(tok))
        if kind == "name":
            constants = {"true": True, "True": True, "false": False, "False": False, "none": None, "None": None}
            return ("const", constants[tok]) if tok in constants else ("var", tok)
        if tok == "(":
            node = self.or_()
            self.take(")")
            return node
        raise ChatTemplateError(f"unsupported construct {tok!r} at offset {self.where}")


def _evaluate(node, scope):
    kind = node[0]
    if kind == "const":
        return node[1]
    if kind == "var":
        if node[1] not in scope:
            raise ChatTemplateError(f"chat template uses undefined variable {node[1]!r}")
        return scope[node[1]]
    if kind == "item":
        base, key = _evaluate(node[1], scope), _evaluate(node[2], scope)
        try:
            return base[key]
        except (KeyError, IndexError, TypeError):
            raise ChatTemplateError(f"chat template: {key!r} is not in {type(base).__name__} value") from None
    if kind == "not":
        return not _evaluate(node[1], scope)
    if kind == "and":
        return _evaluate(node[1], scope) and _evaluate(node[2], scope)
    if kind == "or":
        return _evaluate(node[1], scope) or _evaluate(node[2], scope)
    a, b = _evaluate(node[1], scope), _evaluate(node[2], scope)
    if kind == "==":
        return a == b
    if kind == "!=":
        return a != b
    try:  # "+"
        return a + b
    except TypeError:
        raise ChatTemplateError(f"chat template: cannot add {type(a).__name__} and {type(b).__name__}") from None


def _parse(template):
    """Template → list of nodes: ("text", s), ("out", expr), ("for", var, expr, body),
    ("if", [(expr, body), ...], else_body)."""
    pieces, pos, trim_next = [], 0, False
    for m in _TAG.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1).endswith("-"):
            text = text.rstrip()
        pieces.append(("text", text, pos))
        opener, body, closer = m.groups()
        trim_next = closer.startswith("-")
        if opener != "{#":
            pieces.append(("out" if opener.startswith("{{") else "stmt", body, m.start()))
        pos = m.end()
    rest = template[pos:]
    pieces.append(("text", rest.lstrip() if trim_next else rest, pos))
    if "{{" in rest or "{%" in rest:
        raise ChatTemplateError(f"unclosed tag after offset {pos}")

    root = []
    stack = [("root", root)]   # open blocks: (kind, node list receiving children)
    for kind, body, where in pieces:
        target = stack[-1][1]
        if kind == "text":
            if body:
                target.append(("text", body))
        elif kind == "out":
            target.append(("out", _Expr(body, where).parse()))
        else:
            words = body.split(None, 1)
            keyword, rest = (words[0], words[1] if len(words) > 1 else "") if words else ("", "")
            if keyword == "for":
                m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s+in\s+(.+)", rest, re.S)
                if not m:
                    raise ChatTemplateError(f"unsupported for-loop {body.strip()!r} at offset {where}")
                node = ("for", m.group(1), _Expr(m.group(2), where).parse(), [])
                target.append(node)
                stack.append(("for", node[3]))
            elif keyword == "if":
                node = ("if", [(_Expr(rest, where).parse(), [])], [])
                target.append(node)
                stack.append(("if", node[1][0][1], node))
            elif keyword in ("elif", "else"):
                if stack[-1][0] not in ("if", "else"):
                    raise ChatTemplateError(f"{{% {keyword} %}} outside an if-block at offset {where}")
                if stack[-1][0] == "else":
                    raise ChatTemplateError(f"{{% {keyword} %}} after {{% else %}} at offset {where}")
                node = stack.pop()[2]
                if keyword == "elif":
                    node[1].append((_Expr(rest, where).parse(), []))
                    stack.append(("if", node[1][-1][1], node))
                else:
                    stack.append(("else", node[2], node))
            elif keyword in ("endfor", "endif"):
                expected = ("for",) if keyword == "endfor" else ("if", "else")
                if stack[-1][0] not in expected:
                    raise ChatTemplateError(f"unexpected {{% {keyword} %}} at offset {where}")
                stack.pop()
            else:
                raise ChatTemplateError(f"unsupported statement {{% {keyword} %}} at offset {where} (supported: "
                                        "for, if/elif/else)")
    if len(stack) > 1:
        raise ChatTemplateError(f"unclosed {{% {stack[-1][0]} %}} block at the end of the template")
    return root


def _render(nodes, scope, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            value = _evaluate(node[1], scope)
            out.append("" if value is None else str(value))
        elif kind == "for":
            items = list(_evaluate(node[2], scope))
            for i, item in enumerate(items):
                inner = dict(scope)
                inner[node[1]] = item
                inner["loop"] = {"first": i == 0, "last": i == len(items) - 1, "index": i + 1, "index0": i,
                                 "length": len(items)}
                _render(node[3], inner, out)
        else:  # if
            for condition, body in node[1]:
                if _evaluate(condition, scope):
                    _render(body, scope, out)
                    break
            else:
                _render(node[2], scope, out)


class ChatTemplate:
    """A parsed chat template; `render(messages, add_generation_prompt=False, **variables)`."""

    def __init__(self, source):
        if not isinstance(source, str):
            raise ChatTemplateError(f"chat template must be a string, got {type(source).__name__}")
        self.source = source
        self._nodes = _parse(source)

    def render(self, messages, add_generation_prompt=False, **variables):
        messages = list(messages)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise ChatTemplateError(f"message {i} must be a dict with string 'role' and 'content', got {message!r}")
        out = []
        _render(self._nodes, {**variables, "messages": messages, "add_generation_prompt": add_generation_prompt}, out)
        return "".join(out)


def render_chat(template, messages, add_generation_prompt=True, **variables):
    """The prompt text of `messages` ([{"role", "content"}, ...]) under a chat template string."""
    return ChatTemplate(template).render(messages, add_generation_prompt=add_generation_prompt, **variables)
