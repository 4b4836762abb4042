"""The embedded store's tables and its writes (see ``_sqlite``)."""

SCHEMA = """
create table if not exists buckets (
    counter text not null, start real not null, amount real not null, expires real not null,
    primary key (counter, start)) without rowid;
create table if not exists holds (
    process text not null, counter text not null, amount real not null, expires real not null,
    primary key (process, counter)) without rowid;
create table if not exists ledger (
    day text not null, key text not null, team text not null, model text not null,
    requests integer not null, input_tokens integer not null, output_tokens integer not null,
    usd real not null, estimated integer not null default 0,
    primary key (day, key, team, model)) without rowid;
create table if not exists spend_by (
    day text not null, key text not null, kind text not null, name text not null,
    requests integer not null, input_tokens integer not null, output_tokens integer not null,
    usd real not null, primary key (day, key, kind, name)) without rowid;
"""

ADD = (
    "insert into buckets values (?, ?, ?, ?) on conflict do update set "
    "amount = amount + excluded.amount, expires = max(expires, excluded.expires)"
)
HOLD = (
    "insert into holds values (?, ?, ?, ?) on conflict do update set "
    "amount = excluded.amount, expires = max(expires, excluded.expires)"
)
LEDGER = (
    "insert into ledger values (?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do update set "
    "requests = requests + excluded.requests, "
    "input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens, usd = usd + excluded.usd, "
    "estimated = estimated + excluded.estimated"
)
SPEND_BY = (
    "insert into spend_by values (?, ?, ?, ?, ?, ?, ?, ?) on conflict do update set "
    "requests = requests + excluded.requests, "
    "input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens, usd = usd + excluded.usd"
)
USAGE = (
    "select day, key, team, model, requests, input_tokens, output_tokens, usd, estimated "
    "from ledger where day >= ?"
)
