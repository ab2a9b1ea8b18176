"""The partner layer: commercial AI APIs behind the gateway, never on the critical path."""
