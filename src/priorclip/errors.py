"""Exception types users can hit. Each message names the file or field and says what to do."""


class PriorCLIPError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(PriorCLIPError, ValueError):
    """A model or training configuration is unknown, has a wrong type or an impossible value."""


class CheckpointError(PriorCLIPError):
    """A checkpoint file cannot be read or does not match the model."""


class DataError(PriorCLIPError):
    """A dataset, caption file or image cannot be used."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset's files are missing; the message lists which."""


class CaptionFileError(DataError):
    """Entries of a caption file cannot be used. The file is read to the end first, so `problems`
    holds every bad entry as (file, where, what), `where` a line ("line 12") or an entry
    ("images[3]"): fixing one problem per run is slow on a 50,000-caption file (issue #16.6)."""

    SHOWN = 5

    def __init__(self, problems):
        self.problems = [(str(f), str(w), str(p)) for f, w, p in problems]
        assert self.problems, "CaptionFileError needs at least one problem"
        files = {f for f, _, _ in self.problems}
        one_file = len(files) == 1
        items = [f"{w} {p}" if one_file else f"{f}: {w} {p}" for f, w, p in self.problems]
        head = f"{self.problems[0][0]}: " if one_file else ""
        if len(items) > 1:
            head += f"{len(items)} problems: "
        more = (f"; ... and {len(items) - self.SHOWN} more (`priorclip data check` lists them all)"
                if len(items) > self.SHOWN else "")
        super().__init__(head + "; ".join(items[: self.SHOWN]) + more)

    def lines(self) -> list[str]:
        """One "file: where what" line per problem."""
        return [f"{f}: {w} {p}" for f, w, p in self.problems]
