"""`dispatch-cli repl`: the CLI's own commands in an interactive prompt_toolkit session.

Each line is parsed by the very command objects `dispatch-cli` runs, so a
line behaves as the same words on the shell would, with three differences
that make a session:

- One connection. The session opens one `Client` from the global options and
  every command reuses it (through `Settings.client`), so there is one HTTP/2
  connection, and one shared stream per microgrid, for the whole session.
- Errors do not end it. A usage error, an API error or any other failure is
  printed as one `Error: ...` line and the prompt comes back.
- Ctrl-C cancels the command that is running (a `stream`, a `watch`, a slow
  `list`) and returns to the prompt; at the prompt it clears the line. Ctrl-D
  or `exit` (also `quit`) leaves.

Completion (Tab) knows the commands, each command's options, and the values
of options and arguments that have a fixed set: `--freq`, `--sort`,
`--by-weekday`, `--by-month`, and component categories and types for targets.
History persists in the user's state directory (platformdirs), e.g.
`~/.local/state/dispatch-cli/repl_history` on Linux, readable by the user only;
a line with a secret option (`serve --key ...`, `--sign-secret ...`) is kept
for the session but never written there.

prompt_toolkit is imported when the session starts, so other commands do not
pay for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import asyncclick as click

from .._proto.frequenz.api.common.v1alpha8.microgrid.electrical_components import (
    BatteryType,
    ElectricalComponentCategory,
    EvChargerType,
    InverterType,
)
from .._proto.frequenz.api.dispatch.v1 import RecurrenceRuleWeekday
from ..errors import DispatchApiError
from .base import ApiFailure, Settings, connect

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completion
    from prompt_toolkit.document import Document

__all__ = ["PROMPT", "history_path", "repl_command", "run_session"]

PROMPT = "dispatch> "
_LEAVE = ("exit", "quit")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_TYPED_CATEGORIES: dict[str, Iterable[Any]] = {
    ElectricalComponentCategory.BATTERY.name: BatteryType,
    ElectricalComponentCategory.INVERTER.name: InverterType,
    ElectricalComponentCategory.EV_CHARGER.name: EvChargerType,
}


def history_path() -> Path:
    """Return the history file of the session, in the user's state directory.

    Returns:
        `<user state dir>/repl_history`, e.g. `~/.local/state/dispatch-cli/repl_history`
        on Linux (`$XDG_STATE_HOME` respected); the directory is created.
    """
    from platformdirs import user_state_path

    directory = user_state_path("dispatch-cli", appauthor=False, ensure_exists=True)
    return directory / "repl_history"


def _members(enum_type: Iterable[Any]) -> list[str]:
    return [member.name for member in enum_type if member.name != "UNSPECIFIED"]


def _target_values() -> list[str]:
    values = _members(ElectricalComponentCategory)
    for category, types in _TYPED_CATEGORIES.items():
        values += [f"{category}:{name}" for name in _members(types)]
    return values


def _values_for(param: click.Parameter) -> list[str]:
    """The fixed set of values `param` accepts, for completion (empty: free-form)."""
    if isinstance(param.type, click.Choice):
        return [str(choice) for choice in param.type.choices]
    if param.type.name == "target":
        return _target_values()
    if param.name == "by_weekday":
        return [name.lower() for name in _members(RecurrenceRuleWeekday)]
    if param.name == "by_month":
        return list(_MONTHS)
    if param.type.name == "time":
        return ["now"]
    return []


def _takes_value(option: click.Option) -> bool:
    return not option.is_flag and not option.count


class CliCompleter:
    """Tab completion from a click group: commands, their options, and fixed values.

    Args:
        group: the command group whose commands are completed.
        ctx: the group's context (click needs one to look commands up).
    """

    def __init__(self, group: click.Group, ctx: click.Context) -> None:
        self._group = group
        self._ctx = ctx

    def commands(self) -> list[str]:
        """Return the command names a line may start with.

        Returns:
            The group's commands (less `repl` itself), `help`, `exit` and `quit`.
        """
        names = [n for n in self._group.list_commands(self._ctx) if n != "repl"]
        return [*names, "help", *_LEAVE]

    def candidates(self, words: list[str], current: str) -> list[str]:
        """Return what may complete `current` after the complete `words` of a line.

        Args:
            words: the words before the one being typed.
            current: the (possibly empty) word being typed.

        Returns:
            Candidate words starting with `current` (matched case-insensitively).
        """
        if not words:
            options = self.commands()
        elif words[0] == "help" and len(words) == 1:
            options = [n for n in self.commands() if n not in ("help", *_LEAVE)]
        else:
            command = self._group.get_command(self._ctx, words[0])
            options = [] if command is None else self._for_command(command, words[1:], current)
        low = current.lower()
        return [o for o in options if o.lower().startswith(low)]

    def _for_command(self, command: click.Command, words: list[str], current: str) -> list[str]:
        by_name: dict[str, click.Option] = {}
        for param in command.params:
            if isinstance(param, click.Option):
                for name in (*param.opts, *param.secondary_opts):
                    by_name[name] = param
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        # Walk the words: an option that takes a value consumes the next word;
        # other words fill the positional arguments in order.
        position = 0
        pending: click.Option | None = None
        for word in words:
            if pending is not None:
                pending = None
            elif word in by_name and _takes_value(by_name[word]):
                pending = by_name[word]
            elif not word.startswith("-"):
                position += 1
        if pending is not None:
            return _values_for(pending)
        if current.startswith("-"):
            names = sorted(by_name)
            return [*names, "--help"]
        if position < len(arguments):
            argument = arguments[position]
            return _values_for(argument)
        # Past the last single argument, a variadic one (ID...) keeps taking words.
        if arguments and arguments[-1].nargs == -1:
            return _values_for(arguments[-1])
        return []

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        """Yield prompt_toolkit completions for the text before the cursor.

        Args:
            document: the line being edited.
            complete_event: why completion was asked for (unused).

        Yields:
            One `Completion` per candidate, replacing the word being typed.
        """
        from prompt_toolkit.completion import Completion

        text = document.text_before_cursor
        try:
            words = shlex.split(text)
        except ValueError:  # an open quote: complete nothing rather than guess
            return
        current = "" if not text or text[-1].isspace() else (words.pop() if words else "")
        for candidate in self.candidates(words, current):
            yield Completion(candidate, start_position=-len(current))


def _prompt_toolkit_completer(completer: CliCompleter) -> Any:
    from prompt_toolkit.completion import Completer

    class _Adapter(Completer):
        def get_completions(
            self, document: Document, complete_event: CompleteEvent
        ) -> Iterator[Completion]:
            return completer.get_completions(document, complete_event)

    return _Adapter()


def _error(message: str) -> None:
    click.echo(f"Error: {message}", err=True)


class _Session:
    """Runs lines as commands of `group`, with `settings` (and its one client)."""

    def __init__(self, group: click.Group, group_ctx: click.Context, settings: Settings) -> None:
        self._group = group
        self._ctx = group_ctx
        self._settings = settings
        self._running: anyio.CancelScope | None = None

    def cancel_running(self) -> bool:
        """Cancel the command that is running, as Ctrl-C does.

        Returns:
            Whether a command was running.
        """
        if self._running is None:
            return False
        self._running.cancel()
        return True

    def help(self, words: list[str]) -> None:
        """Print the session's help, or a command's.

        Args:
            words: the words after `help`.
        """
        if words:
            command = self._group.get_command(self._ctx, words[0])
            if command is None:
                _error(f"no such command {words[0]!r}; try 'help'")
                return
            ctx = click.Context(command, info_name=words[0], parent=self._ctx)
            click.echo(command.get_help(ctx))
            return
        names = [n for n in self._group.list_commands(self._ctx) if n != "repl"]
        click.echo("Commands (each as on the shell, without 'dispatch-cli'):")
        for name in names:
            command = self._group.get_command(self._ctx, name)
            summary = command.get_short_help_str(70) if command is not None else ""
            click.echo(f"  {name:<10} {summary}")
        click.echo("  help [COMMAND], exit (or Ctrl-D). Tab completes; Ctrl-C stops a command.")

    async def run_line(self, line: str) -> bool:
        """Run one line; report every failure as one line.

        Args:
            line: the line as typed.

        Returns:
            False when the line asks to leave the session.
        """
        try:
            words = shlex.split(line)
        except ValueError as error:
            _error(f"{error} in {line!r}")
            return True
        if not words:
            return True
        name, args = words[0], words[1:]
        if name in _LEAVE:
            return False
        if name == "help":
            self.help(args)
            return True
        command = self._group.get_command(self._ctx, name)
        if command is None or name == "repl":
            what = "already in the repl" if name == "repl" else f"no such command {name!r}"
            _error(f"{what}; try 'help'")
            return True
        await self._run_command(command, name, args)
        return True

    async def _run_command(self, command: click.Command, name: str, args: list[str]) -> None:
        # A copy per line: `--json` on one command must not stick to the next.
        settings = dataclasses.replace(self._settings)
        with _logging_kept(), anyio.CancelScope() as scope:
            self._running = scope
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_cancel_on_sigint, self)
                    try:
                        ctx = await command.make_context(name, args, parent=self._ctx, obj=settings)
                        async with ctx:
                            await command.invoke(ctx)
                    finally:
                        tasks.cancel_scope.cancel()
            except* click.exceptions.Exit:
                pass  # --help, or a command that already reported its failures
            except* click.ClickException as group:
                for error in _leaves(group):
                    assert isinstance(error, click.ClickException)
                    _error(error.format_message())
            except* click.Abort:
                _error("aborted")
            except* DispatchApiError as group:
                for error in _leaves(group):
                    assert isinstance(error, DispatchApiError)
                    _error(ApiFailure(error).format_message())
            except* Exception as group:
                for error in _leaves(group):
                    _error(f"{type(error).__name__}: {error}")
            finally:
                self._running = None
        if scope.cancelled_caught:
            click.echo("(cancelled)", err=True)


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """Undo what a command does to the root logger, as its process ending would on the shell.

    `serve` sets up logging for its process (a stderr handler at its
    `--log-level`); in a session that would outlive it, and every later
    command would print INFO lines (and a later `serve --log-level` would be
    ignored, as `logging.basicConfig` runs once).
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


async def _cancel_on_sigint(session: _Session) -> None:
    """Turn Ctrl-C (SIGINT) into cancelling the running command, not ending the process."""
    try:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                session.cancel_running()
                return
    except NotImplementedError:
        return  # Windows: Ctrl-C arrives as KeyboardInterrupt instead


_SECRET_OPTIONS = ("--key", "--auth-key", "--sign-secret")


def _has_secret(line: str) -> bool:
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    return any(word.split("=", 1)[0] in _SECRET_OPTIONS for word in words)


def _history(path: Path) -> Any:
    """A prompt_toolkit `FileHistory` at `path`, private, that never writes a secret.

    Args:
        path: the history file; created readable and writable by the user only.

    Returns:
        The history: every line for the session, on disk those without a secret option.
    """
    from prompt_toolkit.history import FileHistory

    class _PrivateHistory(FileHistory):
        def store_string(self, string: str) -> None:
            if not _has_secret(string):
                super().store_string(string)

    # Created (or tightened) before the first write: it may hold payloads and targets.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return _PrivateHistory(str(path))


async def run_session(
    group: click.Group,
    group_ctx: click.Context,
    settings: Settings,
    *,
    history_file: Path | None = None,
) -> None:
    """Read lines and run them as commands until Ctrl-D or `exit`.

    Input and output are prompt_toolkit's current app session's (the terminal,
    or what a test set with `create_app_session`).

    Args:
        group: the CLI's command group.
        group_ctx: the group's context (the global options were parsed into it).
        settings: the global options; its client is opened here, once.
        history_file: where to keep the history; default `history_path()`.

    Raises:
        click.UsageError: no server URL was given.
    """
    from prompt_toolkit import PromptSession

    completer = CliCompleter(group, group_ctx)
    history = _history(history_file if history_file is not None else history_path())
    prompt: PromptSession[str] = PromptSession(
        history=history,
        completer=_prompt_toolkit_completer(completer),
        complete_while_typing=False,
    )
    async with connect(settings) as client:
        session = _Session(group, group_ctx, dataclasses.replace(settings, client=client))
        click.echo(
            f"Connected to {client.server_url}. 'help' lists the commands; "
            "Tab completes; Ctrl-D or 'exit' leaves.",
            err=True,
        )
        while True:
            try:
                line = await prompt.prompt_async(PROMPT)
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt: a fresh line
            except EOFError:
                break
            if not await session.run_line(line):
                break


@click.command("repl")
@click.pass_context
async def repl_command(ctx: click.Context) -> None:
    """Interactive session: the commands above with completion and history, one connection.

    Ctrl-C stops the running command (e.g. stream), Ctrl-D or 'exit' leaves.
    """
    parent = ctx.parent
    assert parent is not None and isinstance(parent.command, click.Group)
    settings = ctx.find_object(Settings)
    assert settings is not None, "the group callback always sets Settings"
    await run_session(parent.command, parent, settings)
