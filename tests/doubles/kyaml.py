"""The YAML subset that kubeadm configs, kubeconfigs and static pod manifests use, for the doubles.

The doubles may only use the Python standard library, which has no YAML. This reads block mappings and
sequences, plain/quoted scalars, flow collections on one line and JSON documents; it refuses anchors, tags
and multi-line scalars instead of guessing, so a test never passes on a config kubeadm would read
differently. `dump` writes the same subset, keys in the order given.
"""
import json
import re


class YAMLError(ValueError):
    pass


def split_documents(text):
    """Documents of a stream, split on `---` lines as k8s.io/apimachinery's YAMLReader does."""
    docs, cur = [], []
    for line in text.splitlines():
        if re.match(r"^---\s*(#.*)?$", line):
            docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
    return [d for d in docs if d.strip() and any(_content(l) for l in d.splitlines())]


def load(text):
    if text.lstrip().startswith("{"):
        return json.loads(text)
    lines = []
    for no, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YAMLError(f"yaml: line {no}: found character that cannot start any token")
        body = _content(raw)
        if body:
            lines.append((no, len(raw) - len(raw.lstrip(" ")), body))
    if not lines:
        return None
    value, pos = _block(lines, 0, lines[0][1])
    if pos != len(lines):
        raise YAMLError(f"yaml: line {lines[pos][0]}: did not find expected key")
    return value


def _content(line):
    """The line without its comment (a `#` that starts the line or follows a space, outside quotes)."""
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"" and (i == 0 or line[i - 1] in " :-[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(ch)
    return "".join(out).rstrip()


def _block(lines, pos, indent):
    if lines[pos][2].lstrip().startswith("- ") or lines[pos][2].strip() == "-":
        return _seq(lines, pos, indent)
    return _map(lines, pos, indent)


def _map(lines, pos, indent):
    result = {}
    while pos < len(lines):
        no, ind, body = lines[pos]
        if ind < indent:
            break
        if ind > indent:
            raise YAMLError(f"yaml: line {no}: mapping values are not allowed in this context")
        key, rest = _split_key(body.strip(), no)
        if key in result:
            raise YAMLError(f'yaml: line {no}: key "{key}" already set in map')
        pos += 1
        if rest == "":
            if pos < len(lines) and (lines[pos][1] > indent or (lines[pos][1] == indent and lines[pos][2].lstrip().startswith("-"))):
                result[key], pos = _block(lines, pos, lines[pos][1])
            else:
                result[key] = None
        else:
            result[key] = _scalar(rest, no)
    return result, pos


def _seq(lines, pos, indent):
    result = []
    while pos < len(lines):
        no, ind, body = lines[pos]
        stripped = body.strip()
        if ind < indent or not (stripped.startswith("- ") or stripped == "-"):
            break
        if ind > indent:
            raise YAMLError(f"yaml: line {no}: did not find expected '-' indicator")
        item = stripped[1:].lstrip()
        if item == "":
            pos += 1
            if pos < len(lines) and lines[pos][1] > indent:
                value, pos = _block(lines, pos, lines[pos][1])
            else:
                value = None
            result.append(value)
        elif _is_key(item) or item.startswith("- ") or item == "-":
            # "- key: value" (or "- - x") opens a collection whose entries sit at the column after "- ".
            inner = ind + (len(stripped) - len(item))
            sub = [(no, inner, " " * inner + item)]
            j = pos + 1
            while j < len(lines) and lines[j][1] >= inner:
                sub.append(lines[j])
                j += 1
            value, used = _block(sub, 0, inner)
            if used != len(sub):
                raise YAMLError(f"yaml: line {sub[used][0]}: did not find expected key")
            result.append(value)
            pos = j
        else:
            result.append(_scalar(item, no))
            pos += 1
    return result, pos


_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'[^']*'|[^'"\[\]{}#&*!|>%@`][^:]*?)\s*:(\s+|$)""")


def _is_key(text):
    return bool(_KEY.match(text))


def _split_key(text, no):
    m = _KEY.match(text)
    if not m:
        raise YAMLError(f"yaml: line {no}: could not find expected ':'")
    key = m.group(1)
    if key[0] in "'\"":
        key = _scalar(key, no)
    return key, text[m.end():].strip()


def _scalar(text, no):
    if text[0] in "&*!|>":
        raise YAMLError(f"yaml: line {no}: anchors, tags and block scalars are not supported by this double")
    if text[0] == '"':
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            raise YAMLError(f"yaml: line {no}: found unexpected end of stream") from None
        if text[end:].strip():
            raise YAMLError(f"yaml: line {no}: did not find expected key")
        return value
    if text[0] == "'":
        if not text.endswith("'") or len(text) < 2:
            raise YAMLError(f"yaml: line {no}: found unexpected end of stream")
        return text[1:-1].replace("''", "'")
    if text[0] in "[{":
        return _flow(text, no)
    return _plain(text)


def _flow(text, no):
    value, rest = _flow_value(text.strip(), no)
    if rest.strip():
        raise YAMLError(f"yaml: line {no}: did not find expected ',' or ']'")
    return value


def _flow_value(text, no):
    text = text.lstrip()
    if text.startswith("["):
        items, text = [], text[1:].lstrip()
        while not text.startswith("]"):
            item, text = _flow_value(text, no)
            items.append(item)
            text = text.lstrip()
            if text.startswith(","):
                text = text[1:].lstrip()
            elif not text.startswith("]"):
                raise YAMLError(f"yaml: line {no}: did not find expected ',' or ']'")
        return items, text[1:]
    if text.startswith("{"):
        result, text = {}, text[1:].lstrip()
        while not text.startswith("}"):
            m = re.match(r"""("(?:[^"\\]|\\.)*"|'[^']*'|[^:,{}\[\]]+?)\s*:\s*""", text)
            if not m:
                raise YAMLError(f"yaml: line {no}: did not find expected ',' or '}}'")
            key = _scalar(m.group(1).strip(), no)
            value, text = _flow_value(text[m.end():], no)
            result[key] = value
            text = text.lstrip()
            if text.startswith(","):
                text = text[1:].lstrip()
            elif not text.startswith("}"):
                raise YAMLError(f"yaml: line {no}: did not find expected ',' or '}}'")
        return result, text[1:]
    if text[:1] in "\"'":
        end = text.index(text[0], 1) + 1 if text[0] == "'" else json.JSONDecoder().raw_decode(text)[1]
        return _scalar(text[:end], no), text[end:]
    m = re.match(r"[^,\]}]*", text)
    return _plain(m.group(0).strip()), text[m.end():]


def _plain(text):
    if text in ("null", "Null", "NULL", "~", ""):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", text):
        return float(text)
    return text


_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./=+@%-][A-Za-z0-9_./:=+@%, -]*$")


def _quote(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return str(value)
    s = str(value)
    if (_PLAIN_SAFE.match(s) and _plain(s) == s and ": " not in s and " #" not in s
            and not s.endswith((" ", ":")) and not s.startswith("- ")):
        return s
    return "'" + s.replace("'", "''") + "'"


def dump(value, indent=0):
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}\n" if indent == 0 else pad + "{}\n"
        out = []
        for k, v in value.items():
            if isinstance(v, dict) and v:
                out.append(f"{pad}{_quote(k)}:\n{dump(v, indent + 2)}")
            elif isinstance(v, list) and v:
                out.append(f"{pad}{_quote(k)}:\n{dump(v, indent)}")
            else:
                out.append(f"{pad}{_quote(k)}: {_inline(v)}\n")
        return "".join(out)
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, dict) and item:
                body = dump(item, indent + 2)
                out.append(pad + "- " + body[indent + 2:])
            elif isinstance(item, list) and item:
                out.append(pad + "-\n" + dump(item, indent + 2))
            else:
                out.append(f"{pad}- {_inline(item)}\n")
        return "".join(out)
    return pad + _inline(value) + "\n"


def _inline(value):
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _quote(value)
