"""The dispatcher: reads request events from the stream and writes them to the database."""
