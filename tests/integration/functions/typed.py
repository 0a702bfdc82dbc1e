"""A function written against `edge.child.function`, the core's typed client for functions."""

from edge.child.function import IpcCallError, get_secret_value, list_secrets


def calls(event, context):
    """Run each call ("list" or get_secret_value's keyword arguments); report answer or error."""
    results = []
    for call in event["calls"]:
        try:
            if call == "list":
                results.append({"ok": True, "secrets": list_secrets()})
                continue
            value = get_secret_value(**call)
        except IpcCallError as exc:
            results.append({"ok": False, "status": exc.status, "message": exc.message})
            continue
        value["CreatedDate"] = value["CreatedDate"].isoformat()
        if "SecretBinary" in value:
            value["SecretBinary"] = value["SecretBinary"].hex()
        results.append({"ok": True, "value": value})
    return results
