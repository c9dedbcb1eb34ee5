-- skiplock 0001 down: removes the batch table and queue settings.
DROP TABLE queue_setting;
DROP TABLE batch;
