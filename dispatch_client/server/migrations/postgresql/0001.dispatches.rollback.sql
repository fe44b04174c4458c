DROP TABLE used_nonces;
DROP TABLE dispatch_events;
DROP TABLE dispatches;
