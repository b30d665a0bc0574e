class UserError(Exception):
    """An error the user can fix (bad input, missing data, wrong config). The CLI prints it as one line."""
