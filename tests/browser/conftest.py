"""The browser tests' session summary: what each test measured (times), printed after the results."""

from chromium_driver import REPORT


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("browser tests")
        for line in REPORT:
            terminalreporter.write_line(line)
