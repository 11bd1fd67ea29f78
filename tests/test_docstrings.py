"""Every public callable of the package has a complete NumPy docstring.

In the spirit of SpeechBrain's ``tests/utils/check_docstrings.py`` (which
checks that every class and function has a docstring), extended to the content
SpeechBrain's own modules carry: an ``Arguments`` section naming every
parameter, a ``Returns`` section when a value is returned and an ``Example``
doctest on every public class and module-level function.

The rules, applied by walking each file of ``speechbrain_moe/`` with ``ast``:

- public: the name (and the name of every enclosing class) does not start
  with ``_``, and it is not nested inside a function;
- every public class, function and method (``forward`` and the Brain hooks
  included) has a docstring; a property (and its setter) needs only that;
- a callable taking parameters other than ``self``/``cls`` has an
  ``Arguments`` (or ``Parameters``) section naming each of them, ``*args`` and
  ``**kwargs`` written with their stars; a class's ``__init__`` parameters are
  documented in the class docstring (or in ``__init__``'s own);
- a callable with a ``return <value>`` statement that is not a generator has a
  ``Returns`` section;
- every public class and module-level function has an ``Example`` section
  holding a doctest (``>>>``); methods may rely on their class's example.

Running the doctests themselves is ``pytest --doctest-modules speechbrain_moe``.
"""

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "speechbrain_moe"

_ARGUMENT_HEADERS = ("Arguments", "Parameters")
_RETURN_HEADERS = ("Returns",)
_EXAMPLE_HEADERS = ("Example", "Examples")


def _sections(docstring):
    """Maps each NumPy section header of ``docstring`` to its body lines."""
    lines = docstring.expandtabs().splitlines()
    sections, current = {}, None
    for index, line in enumerate(lines):
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", following):
            current = line.strip()
            sections[current] = []
            continue
        if re.fullmatch(r"\s*-{3,}\s*", line):
            continue
        if current is not None:
            sections[current].append(line)
    return sections


def _documented_names(body):
    """The parameter names an Arguments section documents.

    An entry is a line at the section's least indentation, ``name : type`` or
    ``name`` alone; ``a, b : int`` documents both ``a`` and ``b``.
    """
    entries = [line for line in body if line.strip()]
    if not entries:
        return set()
    indent = min(len(line) - len(line.lstrip()) for line in entries)
    names = set()
    for line in entries:
        if len(line) - len(line.lstrip()) != indent:
            continue
        head = line.strip().split(" : ")[0].rstrip(":").strip()
        for name in head.split(","):
            names.add(name.strip().strip("`"))
    return names


def _parameters(function):
    """The parameter names ``function`` takes, ``*args``/``**kwargs`` starred."""
    arguments = function.args
    names = [a.arg for a in arguments.posonlyargs + arguments.args]
    if arguments.vararg is not None:
        names.append("*" + arguments.vararg.arg)
    names += [a.arg for a in arguments.kwonlyargs]
    if arguments.kwarg is not None:
        names.append("**" + arguments.kwarg.arg)
    return [name for name in names if name not in ("self", "cls")]


def _own_nodes(function):
    """The nodes of ``function``'s body, not descending into nested scopes."""
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    stack = [node for node in function.body if not isinstance(node, scopes)]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, scopes):
                stack.append(child)


def _returns_value(function):
    """Whether ``function`` returns a value (a ``return x``, no ``yield``)."""
    nodes = list(_own_nodes(function))
    if any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in nodes):
        return False
    return any(
        isinstance(node, ast.Return)
        and node.value is not None
        and not (isinstance(node.value, ast.Constant) and node.value.value is None)
        for node in nodes
    )


def _decorators(function):
    """The decorator names of ``function`` (``property``, ``x.setter``...)."""
    names = []
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call):
            decorator = decorator.func
        names.append(ast.unparse(decorator))
    return names


def _has_section(sections, headers):
    """Whether one of ``headers`` is a section of the docstring."""
    return any(header in sections for header in headers)


def _arguments(sections):
    """The names documented by the Arguments/Parameters sections."""
    names = set()
    for header in _ARGUMENT_HEADERS:
        names |= _documented_names(sections.get(header, []))
    return names


def _check_callable(function, where, offences, *, method, extra_names=()):
    """Appends the offences of one function or method to ``offences``."""
    docstring = ast.get_docstring(function)
    decorators = _decorators(function)
    if docstring is None:
        offences.append(f"{where}: no docstring")
        return
    if "property" in decorators or any(
        d.endswith((".setter", ".deleter", ".getter")) for d in decorators
    ):
        return
    sections = _sections(docstring)
    missing = [
        name
        for name in _parameters(function)
        if name not in _arguments(sections) and name not in extra_names
    ]
    if missing:
        offences.append(f"{where}: Arguments section lacks {', '.join(missing)}")
    if _returns_value(function) and not _has_section(sections, _RETURN_HEADERS):
        offences.append(f"{where}: no Returns section")
    if not method:
        _check_example(sections, where, offences)


def _check_example(sections, where, offences):
    """Appends an offence unless the docstring has an Example doctest."""
    bodies = [sections[h] for h in _EXAMPLE_HEADERS if h in sections]
    if not any(">>>" in line for body in bodies for line in body):
        offences.append(f"{where}: no Example section with a doctest")


def _check_class(node, where, offences, path):
    """Appends the offences of a public class and its public methods."""
    docstring = ast.get_docstring(node)
    if docstring is None:
        offences.append(f"{where}: no docstring")
        return
    sections = _sections(docstring)
    _check_example(sections, where, offences)
    documented = _arguments(sections)
    for child in node.body:
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                child_where = f"{path}:{child.lineno} {node.name}.{child.name}"
                _check_class(child, child_where, offences, path)
            continue
        child_where = f"{path}:{child.lineno} {node.name}.{child.name}"
        if child.name == "__init__":
            own = ast.get_docstring(child)
            names = documented | (_arguments(_sections(own)) if own else set())
            missing = [name for name in _parameters(child) if name not in names]
            if missing:
                offences.append(
                    f"{child_where}: class Arguments section lacks {', '.join(missing)}"
                )
        elif not child.name.startswith("_"):
            _check_callable(child, child_where, offences, method=True)


def check_source(source, path="<source>"):
    """The docstring offences of one module's source, one line each.

    Arguments
    ---------
    source : str
        The Python source of a module.
    path : str
        How the offences name the file.

    Returns
    -------
    list of str
        ``"path:line name: what is missing"`` for each offence.
    """
    offences = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                where = f"{path}:{node.lineno} {node.name}"
                _check_callable(node, where, offences, method=False)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            _check_class(node, f"{path}:{node.lineno} {node.name}", offences, path)
    return offences


def package_offences():
    """The docstring offences of every file of ``speechbrain_moe/``."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        offences += check_source(path.read_text(), relative)
    return offences


def test_every_public_callable_is_documented():
    offences = package_offences()
    for offence in offences:
        print(offence)
    assert not offences, (
        f"{len(offences)} docstring offences (listed above, file:line name: what "
        "is missing); write the NumPy sections (Arguments / Returns / Example) "
        "in SpeechBrain's style."
    )


_BAD_SNIPPET = '''
class Adapter:
    """An adapter without an example.

    Arguments
    ---------
    size : int
        Width.
    """

    def __init__(self, size, dropout):
        pass

    def forward(self, x, *args, **kwargs):
        """Runs the adapter.

        Arguments
        ---------
        x : torch.Tensor
            Input.
        args
            Unstarred, so it does not count.
        """
        return x

    @property
    def width(self):
        """A property needs only this line."""
        return 1

    def _private(self, y):
        return y


def undocumented(a):
    return a


def complete(a, *rest):
    """Complete.

    Arguments
    ---------
    a, *rest : int
        Numbers.

    Returns
    -------
    int

    Example
    -------
    >>> complete(1)
    1
    """
    return a


def generator(items):
    """Yields.

    Arguments
    ---------
    items : list
        Things.

    Example
    -------
    >>> list(generator([1]))
    [1]
    """
    yield from items


def _helper(z):
    def public_inside(w):
        return w
    return z


def no_value(items):
    """Returns nothing itself; its nested helper does.

    Arguments
    ---------
    items : list
        Things.

    Example
    -------
    >>> no_value([])
    """

    def helper():
        return items

    helper()
'''


def test_checker_flags_a_bad_snippet():
    offences = check_source(_BAD_SNIPPET, "bad.py")
    assert offences == [
        "bad.py:2 Adapter: no Example section with a doctest",
        "bad.py:11 Adapter.__init__: class Arguments section lacks dropout",
        "bad.py:14 Adapter.forward: Arguments section lacks *args, **kwargs",
        "bad.py:14 Adapter.forward: no Returns section",
        "bad.py:35 undocumented: no docstring",
    ], offences
