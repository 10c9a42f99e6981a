-- The part of OnlyOffice's PostgreSQL schema (server/schema/postgresql/createdb.sql) that the CI
-- document-server stand-in uses: the real table names and keys, so the stand-in's queries have
-- the shape docservice's have. Users' stacks run OnlyOffice's own file (the `schema` service).
CREATE TABLE IF NOT EXISTS doc_changes (
  tenant varchar(255) COLLATE "default" NOT NULL,
  id varchar(255) COLLATE "default" NOT NULL,
  change_id int4 NOT NULL,
  user_id varchar(255) COLLATE "default" NOT NULL,
  user_id_original varchar(255) COLLATE "default" NOT NULL,
  user_name varchar(255) COLLATE "default" NOT NULL,
  change_data text COLLATE "default" NOT NULL,
  change_date timestamp without time zone NOT NULL,
  PRIMARY KEY (tenant, id, change_id)
);
CREATE TABLE IF NOT EXISTS task_result (
  tenant varchar(255) COLLATE "default" NOT NULL,
  id varchar(255) COLLATE "default" NOT NULL,
  status int2 NOT NULL,
  status_info int4 NOT NULL,
  created_at timestamp without time zone DEFAULT NOW(),
  last_open_date timestamp without time zone NOT NULL DEFAULT NOW(),
  user_index int4 NOT NULL DEFAULT 1,
  change_id int4 NOT NULL DEFAULT 0,
  callback text COLLATE "default" NOT NULL DEFAULT '',
  baseurl text COLLATE "default" NOT NULL DEFAULT '',
  password text COLLATE "default" NULL,
  additional text COLLATE "default" NULL,
  PRIMARY KEY (tenant, id)
);
