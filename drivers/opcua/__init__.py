"""OPC UA driver (asyncua): imported only when a device uses it."""
