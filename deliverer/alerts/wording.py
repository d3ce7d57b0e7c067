"""What an alert's e-mail says: its subject and body, naming the endpoint, and what the
merchant can do about it."""

from __future__ import annotations

from deliverer.models import Alert, Endpoint

KIND_FAILING = "endpoint_failing"
KIND_DISABLED = "endpoint_disabled"  # the receiver answered 410 Gone
KIND_AUTO_DISABLED = "endpoint_auto_disabled"  # failed without a break for days
SUBJECTS = {KIND_FAILING: "Webhook endpoint failing",
            KIND_DISABLED: "Webhook endpoint disabled",
            KIND_AUTO_DISABLED: "Webhook endpoint disabled"}


def email_text(alert: Alert, endpoint: Endpoint | None) -> tuple[str, str]:
    """Subject and body of an alert's e-mail, naming its endpoint."""
    what = SUBJECTS.get(alert.kind, SUBJECTS[KIND_FAILING])
    subject = f"[deliverer] {what}: {endpoint.url if endpoint else ''}"
    lines = [alert.message, ""]
    if endpoint is not None:
        lines += [f"Endpoint: {endpoint.url}", f"Endpoint id: {endpoint.public_id}"]
        if endpoint.description:
            lines.append(f"Description: {endpoint.description}")
        if endpoint.disabled_reason:
            lines.append(f"Disabled: {endpoint.disabled_reason}")
    if alert.notification_id:
        lines.append(f"Notification: {alert.notification_id}")
    if endpoint is not None and endpoint.failing_since is not None:
        lines.append(f"Failing since: {endpoint.failing_since.isoformat()}")
    lines.append(f"Raised: {alert.created_at.isoformat()}")
    if alert.kind == KIND_FAILING:
        # The operator console is the provider's; the merchant's places are these.
        lines.append("Fix your endpoint, then retry the failed notifications from the API "
                     "or your webhook portal.")
    else:
        lines.append("Fix your endpoint, then enable it again: what it holds is sent in "
                     "order.")
    return subject, "\n".join(lines) + "\n"
