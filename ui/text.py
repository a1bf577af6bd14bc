"""Untrusted text on the screen: the one escape every page uses before Streamlit's Markdown.

`st.markdown`, `subheader`, `caption`, `error`, `info`, `warning`, `success` and widget labels read
their text as Markdown: a DICOM AccessionNumber of `![t](http://host/x)` made the browser fetch
that address, `**x**` became bold. Header values, PACS fields, file names, user names and error
messages (which may name a file) go through `literal` first; the page's own words do not.
"""
from __future__ import annotations

import re
import string

# Every ASCII punctuation character may be backslash-escaped in CommonMark, and then stands for
# itself: no emphasis, link, image, heading, list, table, HTML, math ($) or Streamlit directive
# (`:red[...]`, `:material/x:`) can start from an escaped one.
_PUNCTUATION = re.compile("[" + re.escape(string.punctuation) + "]")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def literal(value: object) -> str:
    """`value` as text that Streamlit's Markdown shows exactly as it is, on one line.

    Args:
        value: anything (None shows as an empty string); str() is taken.
    Returns:
        The text with every ASCII punctuation character backslash-escaped and line breaks turned
        into spaces (a new line could start a heading or a list).
    """
    text = "" if value is None else str(value)
    return _PUNCTUATION.sub(lambda m: "\\" + m.group(0), _LINE_BREAKS.sub(" ", text))
