-- skiplock 0003 down: leave 15 % of each batch page free again (new pages).
ALTER TABLE batch SET (fillfactor = 85);
