"""A module whose calls all go through one dispatch method."""


class Dispatcher:
    def handle(self, client_ip, function, *args):
        """Return what arrived."""
        if function == "fail":
            raise KeyError(args[0] if args else "fail")
        return {"client_ip": client_ip, "function": function, "args": list(args)}
