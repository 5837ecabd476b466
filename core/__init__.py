"""OpenPrepay core: the domain vocabulary and the runtime. It imports no protocol library
(pymodbus, asyncua, influxdb_client); plugins and services bring those."""
