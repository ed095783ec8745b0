"""Demo modules served when modserver runs without a config file.

The server imports them by their plain names (``echo``, ``laser``,
``wavemeter``) because imports resolve against the config file's directory,
which is this one.
"""
