"""What Tessera has seen: the catalog of event types, properties, traits and context
fields with their observed types (a batch stage), events per minute and source, profile
and audience counts (a recount job), and the Home dashboard's figures read from them."""
