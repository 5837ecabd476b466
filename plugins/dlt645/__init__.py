"""DL/T 645-2007 electricity meters on RS-485 buses and transparent TCP gateways: our own
frame codec, profiles as data (generic single- and three-phase meters), a driver with
read-back-confirmed remote control, a simulator, and `openprepay dlt645 address|sync-time`.
ESAM-encrypted State Grid meters are refused. See README.md in this folder."""
