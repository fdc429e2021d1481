#!/usr/bin/env python3
"""A `cvc5` executable for `iotgate check --prove` (cedar-policy-symcc), built on the cvc5
Python API that the PyPI package `cvc5` ships (the wheel has the solver library, no binary).

symcc starts `$CVC5 --lang smt --tlimit=N` and talks SMT-LIB 2 over stdin/stdout, one
command at a time. This reads stdin, cuts it into whole commands (balanced parentheses,
strings, |quoted| symbols and ; comments respected), parses each with cvc5's own parser
(sharing one solver and symbol manager), runs it with cvc5's command interpreter, and prints
what cvc5 prints, flushing after each command.

Options of the form --name=value are set as solver options (--tlimit, --rlimit, ...);
--lang is implied (SMT-LIB 2.6).
"""
import sys

import cvc5


def commands(stream):
    """Yields each whole top-level command of an SMT-LIB stream."""
    text, depth, state = [], 0, None  # state: None, '"' string, '|' symbol, ';' comment
    for line in stream:
        for ch in line:
            if state == ";":
                if ch == "\n":
                    state = None
                continue
            text.append(ch)
            if state is not None:
                if ch == state:
                    state = None
                continue
            if ch in "\"|":
                state = ch
            elif ch == ";":
                text.pop()
                state = ";"
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    yield "".join(text)
                    text = []


def fresh(tm, options):
    """A solver with the command line's options, and its symbol manager."""
    solver = cvc5.Solver(tm)
    for name, value in options:
        solver.setOption(name, value)
    return solver, cvc5.SymbolManager(tm)


def main():
    options = [
        tuple(arg[2:].split("=", 1))
        for arg in sys.argv[1:]
        if arg.startswith("--") and "=" in arg and not arg.startswith("--lang=")
    ]
    tm = cvc5.TermManager()
    solver, symbols = fresh(tm, options)
    for text in commands(sys.stdin):
        # a parser per command: `set-option` resets an incremental parser's input; the
        # symbol manager keeps the declarations
        parser = cvc5.InputParser(solver, symbols)
        parser.setStringInput(cvc5.InputLanguage.SMT_LIB_2_6, text, "stdin")
        while True:
            try:
                command = parser.nextCommand()
            except RuntimeError as e:
                # cvc5 reports a parse error and quits
                sys.stdout.write(f'(error "{e}")\n')
                sys.stdout.flush()
                return 1
            if command.isNull():
                break
            name = command.getCommandName()
            if name == "exit":
                return 0
            if name == "reset":
                # as cvc5 does: forget everything, logic and declarations included
                solver, symbols = fresh(tm, options)
                continue
            sys.stdout.write(command.invoke(solver, symbols))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
