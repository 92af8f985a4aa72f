"""The one line odir prints when the tracking server or the Prefect server of the secured scaled-out stack
(infra/, docs/security.md) refuses its credentials."""

from __future__ import annotations

from steps.support import tracking


def refused(error: BaseException) -> str | None:
    """One line when ``error`` is the tracking server or the Prefect server refusing the credentials (HTTP 401) or
    the permission (HTTP 403), naming the server and what to set; None for any other error."""
    if (line := tracking.access_refused(error)) is not None:
        return line
    import httpx
    from prefect.settings import get_current_settings

    settings = get_current_settings().api
    for cause in tracking.causes(error):
        if (
            isinstance(cause, httpx.HTTPStatusError)
            and cause.response.status_code in (401, 403)
            and str(cause.request.url).startswith(settings.url or "-")
        ):
            sent = "was not accepted" if settings.auth_string else "was not set"
            status = cause.response.status_code
            return (
                f"Prefect server {settings.url} refused the request (HTTP {status}: the auth string {sent}); set "
                "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING"
            )
    return None
