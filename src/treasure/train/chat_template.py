"""A markers-aware chat template: the model's own Jinja template, wrapped so it takes a `markers` argument.

    tokenizer.apply_chat_template(messages, markers={"domain": "Code"}, add_generation_prompt=True)

renders exactly what training showed the model for that prompt: every message's text sanitised as
markers.sanitize does, the block of markers.render_block (same category order, value canonicalisation and float
formatting) appended to the last user turn after the format's separator, then the original template, unchanged.
Engines that forward chat-template arguments (vLLM's ``chat_template_kwargs``, transformers' ``**kwargs``) serve a
bundle with no extra code.

How: a preamble rebuilds ``messages`` and then the original template runs on it. The preamble emits no text: every
tag trims its whitespace and the last one's newline is eaten by ``trim_blocks``, which transformers (and so vLLM)
always enables. The taxonomy (categories, values, bounds) is written into the template as literals, so the template
is self-contained. Invalid markers raise a TemplateError, as render_block raises a TaxonomyError.

sanitize's regular expression is re-implemented with string operations (Jinja has no regex) from the same rules
(markers.sanitize_rules): text is split on "<" (no match can contain a second "<", so each "<" is tested on its
own), then each piece is checked against every text format's delimiter tags and every token format's shape with a
small state machine. The block's pieces come from the run format's `BlockFormat` (markers.py) too. Python's case-insensitive matching also lets a few non-ASCII letters match
ASCII ones (the Kelvin sign for k, dotted/dotless i, long s); the tables below list them, and a test checks them
against `re` over every code point.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

from treasure.errors import ConfigError
from treasure.markers import PAPER, ZWSP, BlockFormat, block_format, sanitize_rules
from treasure.recipe import MarkerConfig
from treasure.taxonomy import Taxonomy

# The non-ASCII characters `re.IGNORECASE` matches for an ASCII letter (every other letter matches its two cases).
_FOLDS = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}
# Characters `(?i)[A-Za-z_]` matches: the first character of a marker token's name.
_NAME_START_CHARS = string.ascii_uppercase + string.ascii_lowercase + "_" + "".join(_FOLDS.values())


def _fold_chars(word: str) -> list[str]:
    """For each character of `word` (ASCII), every character `re.IGNORECASE` matches it with."""
    return [c.upper() + c.lower() + _FOLDS.get(c.lower(), "") if c.isalpha() else c for c in word]


# The paper opener's tables, which a test checks against `re` over every code point.
_MARKER_LIST_CHARS = _fold_chars(PAPER.open[1:-1])


def _lit(value: Any) -> str:
    """A Jinja literal for plain data (str, bool, None, int, float, list, dict with str keys)."""
    if isinstance(value, str):
        # Jinja decodes string literals with unicode-escape after an ascii/backslashreplace round trip, which
        # JSON's escapes (\\, \", \n) survive; non-ASCII characters are kept as they are.
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_lit(str(k))}: {_lit(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Jinja literal for {type(value).__name__}")


def _bound(value: float | None, name: str, which: str) -> float | None:
    if value is None or math.isfinite(value):
        return value
    if (which == "min" and value < 0) or (which == "max" and value > 0):
        return None  # an infinite bound on the open side bounds nothing
    raise ConfigError(f"taxonomy category {name!r}: {which} {value} leaves no valid value")


def _categories(taxonomy: Taxonomy, fmt: BlockFormat) -> list[dict[str, Any]]:
    out = []
    for c in taxonomy:
        pre, post = fmt.around_value(c)  # a segment is pre + value text + post
        out.append(
            {
                "name": c.name,
                "kind": c.kind,
                "values": list(c.values),
                "min": _bound(c.min, c.name, "min"),
                "max": _bound(c.max, c.name, "max"),
                "pre": pre,
                "post": post,
            }
        )
    return out


# The preamble. `{lit:...}` holes are filled by `wrap_chat_template`. It reads `messages` and `markers` and rebinds
# `messages`; every variable it sets starts with `treasure_` so it cannot collide with the original template's.
_PREAMBLE = r"""{#- treasure: markers-aware chat template (treasure.train.chat_template). The original follows the preamble. -#}
{%- set treasure_cfg = {CFG} -%}
{%- set treasure_cats = {CATS} -%}
{%- set treasure_names = treasure_cats | map(attribute='name') | list -%}
{%- set treasure_tags = {TAGS} -%}
{%- set treasure_tokens = {TOKENS} -%}
{%- set treasure_ns = namespace(parts=[], block='', msgs=[], last_user=-1, out='', hit=false, state=0, val=none, text='') -%}
{%- if treasure_cfg['prompt'] and markers is defined and markers is not none -%}
  {%- if markers is not mapping -%}
    {{- raise_exception('markers must be a mapping of category to value') -}}
  {%- endif -%}
  {%- for treasure_k in markers -%}
    {%- if treasure_k not in treasure_names -%}
      {{- raise_exception('unknown marker category ' ~ treasure_k ~ ' (known: ' ~ treasure_names | join(', ') ~ ')') -}}
    {%- endif -%}
  {%- endfor -%}
  {%- for treasure_c in treasure_cats -%}
    {%- if treasure_c['name'] in markers and markers[treasure_c['name']] is not none -%}
      {%- set treasure_v = markers[treasure_c['name']] -%}
      {%- if treasure_c['kind'] == 'categorical' -%}
        {%- if treasure_v is boolean or not (treasure_v is string or treasure_v is integer) -%}
          {{- raise_exception(treasure_c['name'] ~ ': expected one of ' ~ treasure_c['values'] | join(', ')) -}}
        {%- endif -%}
        {%- set treasure_ns.text = (treasure_v | string).strip() -%}
        {%- set treasure_ns.val = none -%}
        {%- if treasure_ns.text in treasure_c['values'] -%}
          {%- set treasure_ns.val = treasure_ns.text -%}
        {%- else -%}
          {%- for treasure_x in treasure_c['values'] -%}
            {%- if treasure_x.lower() == treasure_ns.text.lower() -%}
              {%- set treasure_ns.val = treasure_x -%}
            {%- endif -%}
          {%- endfor -%}
        {%- endif -%}
        {%- if treasure_ns.val is none -%}
          {{- raise_exception(treasure_c['name'] ~ ': unknown value ' ~ treasure_ns.text) -}}
        {%- endif -%}
        {%- set treasure_t = treasure_ns.val -%}
      {%- else -%}
        {%- set treasure_x = none if treasure_v is boolean else treasure_v | float(none) -%}
        {%- if treasure_x is none or treasure_x != treasure_x or treasure_x > 1.7976931348623157e308 or treasure_x < -1.7976931348623157e308 -%}
          {{- raise_exception(treasure_c['name'] ~ ': expected a finite number') -}}
        {%- endif -%}
        {%- if treasure_c['kind'] == 'int' -%}
          {%- if treasure_x != treasure_x | int -%}
            {{- raise_exception(treasure_c['name'] ~ ': expected an integer') -}}
          {%- endif -%}
          {%- set treasure_x = treasure_x | int -%}
        {%- endif -%}
        {%- if treasure_c['min'] is not none and treasure_x < treasure_c['min'] -%}
          {{- raise_exception(treasure_c['name'] ~ ': below the minimum') -}}
        {%- endif -%}
        {%- if treasure_c['max'] is not none and treasure_x > treasure_c['max'] -%}
          {{- raise_exception(treasure_c['name'] ~ ': above the maximum') -}}
        {%- endif -%}
        {%- set treasure_t = treasure_cfg['float'] | format(treasure_x) if treasure_c['kind'] == 'float' else treasure_x | string -%}
      {%- endif -%}
      {%- set treasure_ns.parts = treasure_ns.parts + [treasure_c['pre'] ~ treasure_t ~ treasure_c['post']] -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if treasure_ns.parts -%}
    {%- set treasure_ns.block = ([treasure_cfg['open']] + treasure_ns.parts + [treasure_cfg['close']]) | join(treasure_cfg['joiner']) -%}
  {%- endif -%}
{%- endif -%}
{%- for treasure_m in messages -%}
  {%- if treasure_m.role == 'user' -%}
    {%- set treasure_ns.last_user = loop.index0 -%}
  {%- endif -%}
{%- endfor -%}
{%- for treasure_m in messages -%}
  {%- if treasure_m.content is string -%}
    {%- set treasure_pieces = treasure_m.content.split('<') -%}
    {%- set treasure_ns.out = treasure_pieces[0] -%}
    {%- for treasure_p in treasure_pieces[1:] -%}
      {%- set treasure_ns.hit = false -%}
      {#- a text format's delimiter: its tag, letter by letter (case folded), then '>' -#}
      {%- for treasure_w in treasure_tags -%}
        {%- if not treasure_ns.hit and treasure_p[treasure_w | length:(treasure_w | length) + 1] == '>' -%}
          {%- set treasure_ns.hit = true -%}
          {%- for treasure_j in range(treasure_w | length) -%}
            {%- if treasure_p[treasure_j] not in treasure_w[treasure_j] -%}
              {%- set treasure_ns.hit = false -%}
            {%- endif -%}
          {%- endfor -%}
        {%- endif -%}
      {%- endfor -%}
      {%- for treasure_s in treasure_tokens -%}
        {%- if not treasure_ns.hit and treasure_p[:1] == treasure_s[0] -%}
          {#- a token shape ('<' s[0] ... s[2] s[3], mark s[1]): states 1 '/'? 2 name start 3 name 4 value 5 end -#}
          {%- set treasure_ns.state = 1 -%}
          {%- for treasure_ch in treasure_p[1:] -%}
            {%- if treasure_ns.state == 1 and treasure_ch == '/' -%}
              {%- set treasure_ns.state = 2 -%}
            {%- elif treasure_ns.state in (1, 2) and treasure_ch in {NAMESTART} -%}
              {%- set treasure_ns.state = 3 -%}
            {%- elif treasure_ns.state == 3 and (treasure_ch.isalnum() or treasure_ch == '_') -%}
            {%- elif treasure_ns.state == 3 and treasure_ch == treasure_s[1] -%}
              {%- set treasure_ns.state = 4 -%}
            {%- elif treasure_ns.state in (3, 4) and treasure_ch == treasure_s[2] -%}
              {%- set treasure_ns.state = 5 -%}
            {%- elif treasure_ns.state == 4 and not (treasure_ch.isspace() or treasure_ch in '<>') -%}
            {%- else -%}
              {%- set treasure_ns.hit = treasure_ns.state == 5 and treasure_ch == treasure_s[3] -%}
              {%- break -%}
            {%- endif -%}
          {%- endfor -%}
        {%- endif -%}
      {%- endfor -%}
      {%- set treasure_ns.out = treasure_ns.out ~ ({ZWSP} if treasure_ns.hit else '<') ~ treasure_p -%}
    {%- endfor -%}
    {%- if loop.index0 == treasure_ns.last_user and treasure_ns.block -%}
      {%- set treasure_ns.out = treasure_ns.out ~ treasure_cfg['sep'] ~ treasure_ns.block -%}
    {%- endif -%}
    {%- set treasure_ns.msgs = treasure_ns.msgs + [dict(treasure_m, content=treasure_ns.out)] -%}
  {%- else -%}
    {%- if loop.index0 == treasure_ns.last_user and treasure_ns.block -%}
      {{- raise_exception('markers need the last user turn to have text content') -}}
    {%- endif -%}
    {%- set treasure_ns.msgs = treasure_ns.msgs + [treasure_m] -%}
  {%- endif -%}
{%- endfor -%}
{%- if treasure_ns.block and treasure_ns.last_user < 0 -%}
  {{- raise_exception('markers need a user turn to carry them') -}}
{%- endif -%}
{%- set messages = treasure_ns.msgs %}
"""

# Marks the boundary so `original_chat_template` can recover the template that was wrapped.
_END = "{%- set messages = treasure_ns.msgs %}\n"


def wrap_chat_template(original: str, config: MarkerConfig, taxonomy: Taxonomy) -> str:
    """The markers-aware version of `original` for a run with `config` over `taxonomy` (the full taxonomy)."""
    if is_wrapped(original):
        original = original_chat_template(original)
    fmt = block_format(config.format)
    rules = sanitize_rules()
    cfg = {
        "prompt": config.prompt_markers,
        "sep": config.separator,
        "open": fmt.open,
        "close": fmt.close,
        "joiner": fmt.joiner,
        "float": f"%.{fmt.float_decimals}f",
    }
    holes = {
        "{CFG}": _lit(cfg),
        "{CATS}": _lit(_categories(config.marker_taxonomy(taxonomy), fmt)),
        "{TAGS}": _lit([_fold_chars(tag) for tag in rules.tags]),
        "{TOKENS}": _lit([[lead[1], mid, end[0], end[1]] for lead, end, mid in rules.tokens]),
        "{NAMESTART}": _lit(_NAME_START_CHARS),
        "{ZWSP}": _lit("<" + ZWSP),
    }
    preamble = _PREAMBLE
    for hole, text in holes.items():
        preamble = preamble.replace(hole, text)
    return preamble + original


def is_wrapped(template: str | None) -> bool:
    return (
        bool(template)
        and template.startswith("{#- treasure: markers-aware chat template")
        and _END in template
    )


def original_chat_template(template: str) -> str:
    """The template a wrapped one was built from (the template itself when it is not wrapped)."""
    if not is_wrapped(template):
        return template
    return template.split(_END, 1)[1]
