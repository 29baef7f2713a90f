"""Sign-in for the Gradio pages: Gradio's own login form, checked against carecycle's accounts."""

from feedback.accounts import Accounts


def sign_in(accounts: Accounts, role: str):
    """Gradio's auth callable: accounts with a password and at least ``role`` get in."""

    def check(username: str, password: str) -> bool:
        account = accounts.by_password(username, password)
        return account is not None and account.has_role(role)

    return check
