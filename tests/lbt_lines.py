"""The examples' marking convention (docs/dcgan.md): what an example is without its LBT lines."""
import re
import tokenize
from io import StringIO


def strip_lbt(source):
    """The example as it is without LBT (docs/dcgan.md's claim): a line whose comment starts ``# LBT`` (``# LBT``
    or ``# LBT: why``) goes, and where it was an ``if ...:``, the block under it moves back one level (the plain
    lines LBT made conditional); a line ending ``# LBT, plain: CODE`` becomes ``CODE``."""
    out, dedent_below = [], None
    for line in source.splitlines():
        indent = len(line) - len(line.lstrip())
        if dedent_below is not None and line.strip() and indent <= dedent_below:
            dedent_below = None
        if dedent_below is not None and line.strip():
            line = line[4:]
        changed = re.match(r"(\s*).*?\s+# LBT, plain: (.*)$", line)
        if changed:
            out.append(changed.group(1) + changed.group(2))
        elif re.search(r"\s# LBT(: .*)?$", line):
            if re.match(r"\s*if .*:\s+# LBT", line):
                dedent_below = indent
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def lbt_names(source):
    """The names in ``source``'s code (not its strings or comments) that belong to LBT (the examples' module and
    class names, ``dcgan_lbt`` and ``LBTGAN``, are names of files, not of LBT's parts)."""
    lbt = re.compile(r"LBTLoss|ConvVAE|lbt|lbt_\w+|use_lbt|errLBT|\w*estimator\w*|netE|optimizerE|opt_e|warmup|est_\w+")
    return [t.string for t in tokenize.generate_tokens(StringIO(source).readline)
            if t.type == tokenize.NAME and lbt.fullmatch(t.string)]
