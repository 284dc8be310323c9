-- dovecot-mirror: the registry in SQL, for Dovecot's dict-sql (see
-- dovecot-mirror-dict-sql.conf.ext). Every registry key is
-- shared/<ns>/<key>, ns being "mirror" or "bag": one row each. Values are
-- text; the counters among them are incremented in place by
-- dict_atomic_inc (UPDATE ... SET value = value + n), which SQLite allows
-- on text holding a number.
CREATE TABLE IF NOT EXISTS mirror_registry (
  ns VARCHAR(16) NOT NULL,
  key VARCHAR(1024) NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (ns, key)
);
